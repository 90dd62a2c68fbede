"""Load policy of the service: token-bucket quotas, and the settings that bound one process's
work (dynamic batching, requests in flight, body read time).

Quotas are per process: with several server processes each holds its own buckets.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class TokenBuckets:
    """One token bucket per key (client address, user id): ``rate`` tokens a second, at most
    ``burst`` saved up. A charge may overdraw the bucket (a request's images are only known once
    its body is read); the key then waits until the debt is repaid. Thread-safe."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a quota needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0: it may go now)."""
        with self._lock:
            level = self._level(key, self.clock())
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str, amount: float = 1.0, overdraw: bool = False) -> float:
        """Take ``amount`` tokens: 0.0 when taken, else the seconds to wait (nothing taken).
        With ``overdraw`` the tokens are always taken (the bucket may go negative)."""
        with self._lock:
            now = self.clock()
            level = self._level(key, now)
            if level < amount and not overdraw:
                return (amount - level) / self.rate if amount <= self.burst else math.inf
            if len(self._buckets) >= self.max_keys:
                self._forget(now)
            self._buckets[key] = (level - amount, now)
            return 0.0

    def _forget(self, now: float) -> None:
        """Drop buckets that are full again (they hold no information)."""
        full = [k for k in self._buckets if self._level(k, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:  # all in debt: keep the newest half
            for k in list(self._buckets)[: self.max_keys // 2]:
                del self._buckets[k]


@dataclass(frozen=True)
class ServiceSettings:
    """How one server process bounds its work. ``None`` or 0 turns a bound off."""

    # Dynamic batching: requests that arrive within ``batch_wait_ms`` of each other share one
    # decoder and one classifier pass of up to ``max_batch_images``. Off: one request at a time.
    batching: bool = True
    batch_wait_ms: float = 2.0
    max_batch_images: int = 64
    # POST /v1/predict requests in flight at once (reading, waiting, running); more get 503.
    max_inflight: int = 32
    # The share of those one client address may hold (at least 1); its next one gets 429.
    client_inflight_share: float = 0.25
    # Seconds a request may take to send its whole body; a stalled upload gets 408.
    body_timeout_s: float = 30.0
    # Per client address: images a second (and burst). Every request is charged one when its
    # headers arrive (before its body is read); a query's further images, and one per image
    # size limit of body bytes, once they are counted.
    client_images_per_s: float | None = None
    client_burst: float = 256
    # Per registered user: answered images a second (and burst); checked before the forward pass.
    user_images_per_s: float | None = None
    user_burst: float = 256
    # Refusals are audited at most one row per client address per this many seconds (the rest
    # are counted into a summary row; with ``workers`` processes, for all of them together);
    # 0: one row per refusal.
    refusal_interval_s: float = 0.0
    # Wrong admin keys checked per second, per address and in all (for the whole service: each
    # of ``workers`` processes takes its share).
    key_attempts_per_s: float = 10.0
    key_attempts_total_per_s: float = 100.0
    workers: int = 1
    # Body size cap of everything but POST /v1/predict (owner calls, console forms).
    small_body_bytes: int = 65536

    def client_quota(self) -> TokenBuckets | None:
        rate = self.client_images_per_s
        return TokenBuckets(rate, self.client_burst) if rate else None

    def user_quota(self) -> TokenBuckets | None:
        rate = self.user_images_per_s
        return TokenBuckets(rate, self.user_burst) if rate else None


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(min(seconds, 3600))))
