"""Dynamic batching: concurrent /v1/predict requests share one decoder pass, one registry
lookup, one classifier pass and one audit write (:meth:`Gatekeeper.answer_batch`).

One worker thread owns the model. A request waits in a queue; the worker takes every waiting
request (FIFO, up to ``max_images`` images; a larger request goes alone), waiting at most
``wait_ms`` after the oldest one arrived for others to join. Each request gets only its own
answer or its own refusal. A request of several images first sends its first image alone as a
probe (:meth:`Gatekeeper.probe_batch`, batched the same way): a refused first image refuses the
request before the rest is decoded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

import torch

from activedaemon.serve.gate import Gatekeeper

log = logging.getLogger(__name__)


class Batcher:
    """Answers requests in dynamic batches on one worker thread (started with :meth:`start`)."""

    def __init__(self, gate: Gatekeeper, wait_ms: float = 2.0, max_images: int = 64,
                 on_batch=None) -> None:  # fmt: skip
        self.gate, self.wait_s, self.max_images = gate, wait_ms / 1000, max_images
        self.on_batch = on_batch  # called with (requests, images) after each batch (metrics)
        # (kind "answer" or "probe", images, started or request size, arrival, future)
        self._queue: deque[tuple[str, torch.Tensor, float, float, Future]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    async def answer(self, images: torch.Tensor, started: float) -> dict:
        """The request's answer, or its ApiError (or the registry's error) raised."""
        return await self._submit("answer", images, started)

    async def probe(self, first: torch.Tensor, size: int):
        """None if the request's first image passes, else the ApiError that refuses it."""
        return await self._submit("probe", first, size)

    async def _submit(self, kind: str, images: torch.Tensor, extra: float):
        future: Future = Future()
        with self._cv:
            self._queue.append((kind, images, extra, time.perf_counter(), future))
            self._cv.notify()
        return await asyncio.wrap_future(future)

    def _take(self) -> list[tuple[str, torch.Tensor, float, float, Future]] | None:
        with self._cv:
            while not self._queue and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            deadline = self._queue[0][3] + self.wait_s
            while sum(len(q[1]) for q in self._queue) < self.max_images and not self._stop:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch = [self._queue.popleft()]
            images = len(batch[0][1])
            while self._queue and images + len(self._queue[0][1]) <= self.max_images:
                item = self._queue.popleft()
                images += len(item[1])
                batch.append(item)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [b for b in batch if b[4].set_running_or_notify_cancel()]
            probes = [b for b in live if b[0] == "probe"]
            answers = [b for b in live if b[0] == "answer"]
            try:
                with self.gate._lock:
                    results = []
                    if probes:
                        sizes = [int(b[2]) for b in probes]
                        results += self.gate.probe_batch([b[1] for b in probes], sizes)
                    if answers:
                        started = [b[2] for b in answers]
                        results += self.gate.answer_batch([b[1] for b in answers], started)
            except Exception as e:  # noqa: BLE001 - the registry is down, say: every request hears it
                for b in probes + answers:
                    b[4].set_exception(e)
                continue
            for b, result in zip(probes + answers, results, strict=True):
                if b[0] == "answer" and isinstance(result, Exception):
                    b[4].set_exception(result)
                else:
                    b[4].set_result(result)
            if self.on_batch is not None and live:
                self.on_batch(len(live), sum(len(b[1]) for b in live))
        for b in self._queue:  # stopped: nobody will answer these
            b[4].cancel()
