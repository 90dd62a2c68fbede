"""The service's front door: pure ASGI middleware that bounds what a client can make the service do
before any route runs, and the audit trail of what it refused.

- :class:`BodyLimit`: request bodies are capped while they stream in (the query limit on
  ``POST /v1/predict``, a small cap everywhere else) and must arrive within the body timeout.
- :class:`Guard`: every request is charged to its client address's quota when its headers arrive
  (before the body is read); a query's images and bytes are charged once they are counted. One
  address holds at most a share of the query slots (429 beyond it; 503 when all are taken).
  Owner endpoints check the admin key before their body is read (:class:`KeyGuard`). Every
  ``POST /v1/predict`` gets exactly one audit outcome; no exception leaves as a bare 500.
- :class:`RefusalLog`: refusals are audited at most one row per client address and interval: the
  first is written before its answer, the rest are counted into one summary row.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from activedaemon.serve.gate import refusal_outcome
from activedaemon.serve.metrics import Metrics
from activedaemon.serve.policy import ServiceSettings, TokenBuckets, retry_after

log = logging.getLogger(__name__)

PREDICT_PATH = "/v1/predict"
OWNER_PREFIXES = ("/v1/users", "/metrics")  # need the admin key (checked here, before the body)
UNCHARGED_PATHS = ("/healthz",)  # a load balancer's probe: never charged, never refused
ADMIN_HEADER = "X-Admin-Key"
DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def json_error(status: int, error: str, reason: str, retry: str | None = None) -> JSONResponse:
    response = JSONResponse({"error": error, "reason": reason}, status_code=status)
    if retry is not None:
        response.headers["Retry-After"] = retry
    return response


def failure_response(e: Exception | None, metrics: Metrics | None = None) -> JSONResponse:
    """503 for a registry that cannot be reached (``e`` None: known already), else 500; the
    reason never holds the error."""
    if e is None or isinstance(e, DB_ERRORS):
        if e is not None:
            log.error("registry unavailable: %s", type(e).__name__)
        if metrics is not None:
            metrics.registry_errors.inc()
        return json_error(503, "registry_unavailable", "the user registry is unreachable; "
                          "nothing was answered; retry later", retry="1")  # fmt: skip
    log.exception("unexpected failure")
    return json_error(500, "internal_error", "the service failed on this request (logged)")


def client_of(scope) -> str:
    """The client's address (uvicorn puts the proxy's X-Forwarded-For here when the connection
    comes from an address in FORWARDED_ALLOW_IPS)."""
    client = scope.get("client")
    return str(client[0])[:64] if client else "unknown"


def is_owner_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OWNER_PREFIXES)


# -- the admin key ------------------------------------------------------------------------------
class KeyGuard:
    """The admin key's check: constant time (both sides hashed first, so not even the length
    shows), and wrong keys are rationed: each failure takes a token from its address's bucket
    and from one bucket for everyone; while either is empty, attempts are refused (429) without
    looking at the key, so no more than ``per_client_per_s`` guesses a second per address and
    ``total_per_s`` in all are ever checked. A right key takes no token. With ``workers``
    processes each takes its share, which bounds the whole service."""

    def __init__(
        self,
        admin_key: str,
        per_client_per_s: float = 10.0,
        total_per_s: float = 100.0,
        workers: int = 1,
        clock=time.monotonic,
    ) -> None:
        self._expected = hashlib.sha256(admin_key.encode()).digest()
        a, b = per_client_per_s / workers, total_per_s / workers
        self.per_client = TokenBuckets(a, max(1.0, a), clock=clock)
        self.total = TokenBuckets(b, max(1.0, b), clock=clock)

    def matches(self, key: str | None) -> bool:
        """Whether ``key`` is the admin key (constant time; no token taken)."""
        given = hashlib.sha256((key or "").encode("utf-8", "replace")).digest()
        return hmac.compare_digest(given, self._expected) and bool(key)

    def check(self, client: str, key: str | None) -> tuple[str, float]:
        """("ok", 0), ("wrong", 0) (a token taken) or ("throttled", seconds to wait)."""
        wait = max(self.per_client.wait(client), self.total.wait(""))
        if wait:
            return "throttled", wait
        if self.matches(key):
            return "ok", 0.0
        self.per_client.take(client, overdraw=True)
        self.total.take("", overdraw=True)
        return "wrong", 0.0


# -- the audit of refusals ----------------------------------------------------------------------
@dataclass
class _Pending:
    outcomes: Counter = field(default_factory=Counter)
    images: int = 0
    latency_ms: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


class RefusalLog:
    """Audit rows of refusals, at most one per client address and ``interval_s`` (0: one row per
    refusal, each written before its answer). The first refusal of an address in an interval is
    written in full before its answer; later ones are counted, and their count, images and
    outcomes go into one summary row (``requests`` = how many) when the interval is over, so a
    throttled client cannot grow the log faster than one row a second. Runs on the event loop."""

    def __init__(self, registry, interval_s: float = 0.0, clock=time.monotonic) -> None:
        self.registry, self.interval_s, self.clock = registry, interval_s, clock
        self._pending: dict[str, _Pending] = {}
        self._written: dict[str, float] = {}  # client -> when its last row was written
        self._task: asyncio.Task | None = None

    async def refuse(
        self,
        client: str,
        started: float,
        images: int,
        outcome: str,
        detail: str,
        user_id: str | None = None,
    ) -> bool:
        """Audit one refusal; False when the registry cannot take a row that is due now (the
        caller then answers 503)."""
        now = self.clock()
        ms = 1000 * (time.perf_counter() - started)
        if self.interval_s and now - self._written.get(client, -math.inf) < self.interval_s:
            pending = self._pending.setdefault(client, _Pending())
            pending.outcomes[outcome] += 1
            pending.images += images
            pending.latency_ms = max(pending.latency_ms, ms)
            self._start_flusher()
            return True
        before = self._written.get(client)
        if self.interval_s:  # before the write: refusals that arrive meanwhile are counted
            self._written[client] = now
        try:
            await run_in_threadpool(self.registry.log_refusal, user_id, outcome, ms, images,
                                    detail, client)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the registry is down: the caller says so
            log.error("refusal (%s) not audited: %s", outcome, type(e).__name__)
            if self.interval_s:
                if before is None:
                    self._written.pop(client, None)
                else:
                    self._written[client] = before
            return False
        return True

    def _start_flusher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(self.interval_s / 4)
            await self.flush(due_only=True)

    async def flush(self, due_only: bool = False) -> None:
        """Write the summary rows (``due_only``: of the addresses whose interval is over)."""
        now = self.clock()
        for client in list(self._pending):
            if due_only and now - self._written.get(client, -math.inf) < self.interval_s:
                continue
            p = self._pending.pop(client)
            counts = " ".join(f"{o}={n}" for o, n in sorted(p.outcomes.items()))
            detail = f"{p.requests} refusals counted together; {counts}"
            outcome = p.outcomes.most_common(1)[0][0]
            self._written[client] = now
            try:
                await run_in_threadpool(self.registry.log_refusal, None, outcome, p.latency_ms,
                                        p.images, detail, client, p.requests)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - keep the count; the next flush tries again
                log.error("refusal summary not audited yet: %s", type(e).__name__)
                old = self._pending.setdefault(client, _Pending())
                old.outcomes.update(p.outcomes)
                old.images += p.images
                return
        stale = [c for c, t in self._written.items() if now - t >= self.interval_s]
        for c in stale:
            if c not in self._pending:
                del self._written[c]


# -- request bodies -----------------------------------------------------------------------------
class _BodyRefused(Exception):
    pass


class BodyLimit:
    """Request bodies over ``max_bytes`` (``POST /v1/predict``) or ``small_bytes`` (every other
    path: owner calls and console forms are small) get 413 before they are spooled, and a body
    that takes longer than ``timeout_s`` to arrive gets 408 (a stalled upload)."""

    def __init__(
        self, app, max_bytes: int, timeout_s: float | None = None, small_bytes: int = 65536
    ) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.small_bytes = small_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes if scope["path"] == PREDICT_PATH else self.small_bytes
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        too_big = json_error(413, "too_large", f"request body over {limit} bytes")
        too_slow = json_error(408, "request_timeout", f"the body did not arrive within "
                              f"{self.timeout_s} s")  # fmt: skip
        if declared > limit:
            return await too_big(scope, receive, send)
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        seen, started, failed = 0, False, None

        async def counting_receive():
            nonlocal seen, failed
            try:
                if deadline is None:
                    message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                failed = too_slow
                raise _BodyRefused from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    failed = too_big
                    raise _BodyRefused
            return message

        async def guarded_send(message):
            nonlocal started
            if failed is not None:  # the app turned our exception into its own error
                if not started:
                    started = True
                    await failed(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyRefused:
            if not started:
                await failed(scope, receive, send)


# -- the door -----------------------------------------------------------------------------------
class Guard:
    """Outermost ASGI middleware. No exception leaves the service as a bare 500 (a registry
    outage is a 503 JSON, anything else a 500 JSON, both logged). Every request but /healthz is
    charged one unit of its address's quota when its headers arrive (429 with Retry-After once
    the bucket is empty). Owner endpoints get their admin key checked (:class:`KeyGuard`) before
    the body is read. For POST /v1/predict: at most ``max_inflight`` queries in flight (503
    ``busy``), and one address holds at most ``client_inflight_share`` of them (429 ``busy``);
    the query's images (and its body's bytes, one image's worth per ``max_bytes``) are charged
    once counted; every request gets exactly one audit outcome: the gate writes one row per
    answered image, every other answer goes to the :class:`RefusalLog` (the first of an interval
    before it is sent). Metrics count outcomes."""

    def __init__(
        self,
        app,
        gate,
        settings: ServiceSettings,
        metrics: Metrics,
        client_quota: TokenBuckets | None,
        keys: KeyGuard,
        refusals: RefusalLog,
    ) -> None:
        self.app, self.gate, self.settings, self.metrics = app, gate, settings, metrics
        self.client_quota, self.keys, self.refusals = client_quota, keys, refusals
        self.inflight = 0
        self.inflight_by_client: Counter = Counter()
        cap = settings.max_inflight
        self.client_cap = max(1, int(cap * settings.client_inflight_share)) if cap else 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, client = scope["path"], client_of(scope)
        state = scope.setdefault("state", {})
        state["client"] = client
        predict = path == PREDICT_PATH and scope["method"] == "POST"
        started = time.perf_counter()
        if path not in UNCHARGED_PATHS and self.client_quota is not None:
            wait = self.client_quota.take(client, 1.0)
            if wait:
                return await self._refuse(
                    scope, receive, send, started, predict, "rate_limited",
                    json_error(429, "rate_limited", "this client is over its quota; retry in "
                               f"{retry_after(wait)} s", retry=retry_after(wait)),
                    f"client quota; {scope['method']} {path[:80]}",
                )  # fmt: skip
        state["charged"] = 1.0
        if is_owner_path(path):
            refused = await self._check_key(scope, client, started)
            if refused is not None:
                return await refused(scope, receive, send)
        if not predict:
            try:
                return await self.app(scope, receive, send)
            except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare 500
                return await failure_response(e, self.metrics)(scope, receive, send)
        limit = self.settings.max_inflight
        busy = None
        if self.client_cap and self.inflight_by_client[client] >= self.client_cap:
            busy = 429, f"this client has {self.client_cap} queries in flight; retry shortly"
        elif limit and self.inflight >= limit:
            busy = 503, f"{limit} queries are in flight; retry shortly"
        if busy is not None:
            response = json_error(busy[0], "busy", busy[1], retry="1")
            return await self._refuse(scope, receive, send, started, True, "busy", response,
                                      f"{busy[0]} busy; {busy[1][:60]}")  # fmt: skip
        await self._predict(scope, receive, send, state, client, started)

    async def _refuse(self, scope, receive, send, started, predict, outcome, response, detail):
        """Answer a refusal made at the door, audited through the refusal log."""
        if predict:
            self.metrics.requests.labels(outcome).inc()
        if not await self.refusals.refuse(client_of(scope), started, 0, outcome, detail):
            self.metrics.registry_errors.inc()
            response = failure_response(None)
        await response(scope, receive, send)

    async def _check_key(self, scope, client: str, started: float):
        """None when the request carries the admin key, else the refusal to send."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get(ADMIN_HEADER.lower())
        auth = headers.get("authorization", "")
        if key is None and scope["path"] == "/metrics" and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        verdict, wait = self.keys.check(client, key)
        if verdict == "ok":
            return None
        what = f"{scope['method']} {scope['path'][:80]}"
        if verdict == "throttled":
            response = json_error(429, "rate_limited", "too many wrong admin keys; retry in "
                                  f"{retry_after(wait)} s", retry=retry_after(wait))  # fmt: skip
            outcome, detail = "key_throttled", f"admin key not checked; {what}"
        else:
            self.metrics.key_failures.inc()
            response = json_error(401, "unauthorized", f"missing or wrong {ADMIN_HEADER} header")
            outcome, detail = "bad_key", f"wrong admin key; {what}"
            log.warning("wrong admin key from %s (%s)", client, what)
        if not await self.refusals.refuse(client, started, 0, outcome, detail):
            self.metrics.registry_errors.inc()
            return failure_response(None)
        return response

    async def _predict(self, scope, receive, send, state, client, started) -> None:
        held: list[dict] = []  # a refusal's messages, sent once its audit row is written
        response_started = False
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def guarded_send(message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if message["status"] == 200 and state.get("audited"):
                    self.metrics.requests.labels("ok").inc()
            if state.get("audited"):
                return await send(message)
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                if await self._audit(held, state, client, started):
                    for m in held:
                        await send(m)
                else:  # no refusal leaves unaudited: while the log is unwritable, all get 503
                    state["audited"] = True
                    unavailable = failure_response(None)
                    await unavailable(scope, receive, send)
                held.clear()

        self.inflight += 1
        self.inflight_by_client[client] += 1
        self.metrics.inflight.inc()
        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare 500
            if response_started:
                log.exception("failure after the answer started")
            else:
                await failure_response(e, self.metrics)(scope, receive, guarded_send)
        finally:
            self.inflight -= 1
            self.inflight_by_client[client] -= 1
            if self.inflight_by_client[client] <= 0:
                del self.inflight_by_client[client]
            self.metrics.inflight.dec()
            self.metrics.latency.observe(time.perf_counter() - started)
            if self.client_quota is not None:  # the body's bytes: one image per max_bytes
                owed = math.ceil(received / max(1, self.gate.limits.max_bytes))
                extra = owed - state.get("charged", 1.0)
                if extra > 0:
                    self.client_quota.take(client, extra, overdraw=True)

    async def _audit(self, held: list[dict], state: dict, client: str, started: float) -> bool:
        """Audit the refusal; False when the registry cannot take it."""
        status = next(m["status"] for m in held if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
        try:
            error = str(json.loads(body).get("error", ""))
        except (ValueError, AttributeError):
            error = ""
        user_id, outcome, detail = state.get("audit") or (
            None, refusal_outcome(status, error), f"{status} {error}")  # fmt: skip
        images = state.get("images", 0)
        if not await self.refusals.refuse(client, started, images, outcome, detail, user_id):
            log.error("refused query (%d %s) not audited", status, error)
            self.metrics.registry_errors.inc()
            self.metrics.requests.labels("unavailable").inc()
            return False
        self.metrics.requests.labels(outcome).inc()
        return True


# -- the docs pages -----------------------------------------------------------------------------
DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def docs_security_headers(html: bytes) -> dict[str, str]:
    """CSP and friends for a Swagger UI / ReDoc page: scripts from this origin plus the page's
    own inline scripts (by hash), no framing, no referrer. Styles may be inline (both UIs set
    them at run time); ReDoc runs its search in a blob: worker."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.findall(html)
    )
    csp = (f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
           "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; "
           "form-action 'none'")  # fmt: skip
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


class DocsHeaders:
    """Security headers on the /docs and /redoc pages (they share the console's origin)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in DOCS_PATHS:
            return await self.app(scope, receive, send)
        held: list[dict] = []

        async def holding_send(message) -> None:
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                body = b"".join(m.get("body", b"") for m in held[1:])
                start = dict(held[0])
                extra = docs_security_headers(body)
                names = {k.lower().encode() for k in extra}
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in names]
                start["headers"] = headers + [(k.encode(), v.encode()) for k, v in extra.items()]
                await send(start)
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, holding_send)
