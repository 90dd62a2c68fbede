"""Dynamic batching: concurrent /v1/predict requests share one decoder pass, one registry
lookup, one classifier pass and one audit write (:meth:`Gatekeeper.answer_batch`).

One worker thread owns the model. A request waits in a queue; the worker takes every waiting
request (FIFO, up to ``max_images`` images; a larger request goes alone), waiting at most
``wait_ms`` after the oldest one arrived for others to join. Each request gets only its own
answer or its own refusal.
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
        self._queue: deque[tuple[torch.Tensor, float, float, Future]] = deque()
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
        future: Future = Future()
        with self._cv:
            self._queue.append((images, started, time.perf_counter(), future))
            self._cv.notify()
        return await asyncio.wrap_future(future)

    def _take(self) -> list[tuple[torch.Tensor, float, float, Future]] | None:
        with self._cv:
            while not self._queue and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            deadline = self._queue[0][2] + self.wait_s
            while sum(len(q[0]) for q in self._queue) < self.max_images and not self._stop:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch = [self._queue.popleft()]
            images = len(batch[0][0])
            while self._queue and images + len(self._queue[0][0]) <= self.max_images:
                item = self._queue.popleft()
                images += len(item[0])
                batch.append(item)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [b for b in batch if b[3].set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                with self.gate._lock:
                    results = self.gate.answer_batch([b[0] for b in live], [b[1] for b in live])
            except Exception as e:  # noqa: BLE001 - the registry is down, say: every request hears it
                for b in live:
                    b[3].set_exception(e)
                continue
            for b, result in zip(live, results, strict=True):
                if isinstance(result, Exception):
                    b[3].set_exception(result)
                else:
                    b[3].set_result(result)
            if self.on_batch is not None:
                self.on_batch(len(live), sum(len(b[0]) for b in live))
        for b in self._queue:  # stopped: nobody will answer these
            b[3].cancel()
