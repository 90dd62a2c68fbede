"""The identity-checked inference service (paper Sec. V-D) as a FastAPI app.

A thin shell over :class:`Gatekeeper` (decode, verify, classify) and the :class:`Registry`: the
routes parse requests, enforce size limits and the admin key, and turn outcomes into JSON.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time.
import asyncio
import contextlib
import hmac
import json
import logging
import time
from typing import Annotated

import torch
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from activedaemon import __version__
from activedaemon.serve.batching import Batcher
from activedaemon.serve.gate import ApiError, Gatekeeper, refusal_outcome
from activedaemon.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from activedaemon.serve.metrics import Metrics
from activedaemon.serve.policy import ServiceSettings, retry_after
from activedaemon.serve.registry import NAME_MAX, UserExists, UserNotFound

log = logging.getLogger(__name__)
ADMIN_HEADER = "X-Admin-Key"
ADMIN_KEY_SCHEME = APIKeyHeader(name=ADMIN_HEADER, auto_error=False, description="owner's key")


# -- response models (they are the OpenAPI contract) --------------------------------------------
class ErrorOut(BaseModel):
    error: str
    reason: str


class PredictionOut(BaseModel):
    user_id: str
    label: int
    class_name: str
    probabilities: list[float]


class PredictOut(BaseModel):
    predictions: list[PredictionOut]


class NewUser(BaseModel):
    user_id: str | None = Field(
        None, description="exactly 8 printable ASCII characters; random when absent"
    )
    name: str = Field("", max_length=NAME_MAX)


class UserOut(BaseModel):
    user_id: str
    number: int
    name: str
    status: str
    created_at: str
    revoked_at: str | None
    credential: str | None = Field(
        None, description="authenticated-id mode only: the user's key material (shown once)"
    )


class UserDetailOut(UserOut):
    usage: dict[str, int] = Field(description="audited images carrying this id, by outcome")


class UsersOut(BaseModel):
    users: list[UserOut]


class HealthOut(BaseModel):
    status: str
    version: str
    ids: str


ERRORS = {
    400: {"model": ErrorOut, "description": "bad input (not an image, wrong size or channels)"},
    401: {"model": ErrorOut, "description": "missing or wrong admin key"},
    403: {"model": ErrorOut, "description": "no registered, active user id in the query"},
    404: {"model": ErrorOut, "description": "no such user"},
    409: {"model": ErrorOut, "description": "the user exists"},
    408: {"model": ErrorOut, "description": "the body did not arrive in time"},
    413: {"model": ErrorOut, "description": "too many images, bytes or pixels"},
    415: {
        "model": ErrorOut,
        "description": "not multipart/form-data, or an image format the service does not read",
    },
    422: {"model": ErrorOut, "description": "malformed request"},
    429: {
        "model": ErrorOut,
        "description": "over the client's or the user's quota (see Retry-After)",
    },
    500: {"model": ErrorOut, "description": "the service failed (logged; audited for queries)"},
    503: {
        "model": ErrorOut,
        "description": "the registry is unreachable, or too many queries "
        "are in flight; retry later (see Retry-After)",
    },
}


def _errors(*codes: int) -> dict:
    return {c: ERRORS[c] for c in codes}


def _json_error(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


class BodyLimit:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes`` before they are spooled,
    and 408 for a body that takes longer than ``timeout_s`` to arrive (a stalled upload)."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        too_big = _json_error(413, "too_large", f"request body over {self.max_bytes} bytes")
        too_slow = _json_error(408, "request_timeout", f"the body did not arrive within "
                               f"{self.timeout_s} s")  # fmt: skip
        if declared > self.max_bytes:
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
                if seen > self.max_bytes:
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


class _BodyRefused(Exception):
    pass


PREDICT_PATH = "/v1/predict"
DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def failure_response(e: Exception | None, metrics: Metrics | None = None) -> JSONResponse:
    """503 for a registry that cannot be reached (``e`` None: known already), else 500; the
    reason never holds the error."""
    if e is None or isinstance(e, DB_ERRORS):
        if e is not None:
            log.error("registry unavailable: %s", type(e).__name__)
        if metrics is not None:
            metrics.registry_errors.inc()
        response = _json_error(503, "registry_unavailable", "the user registry is unreachable; "
                               "nothing was answered; retry later")  # fmt: skip
        response.headers["Retry-After"] = "1"
        return response
    log.exception("unexpected failure")
    return _json_error(500, "internal_error", "the service failed on this request (logged)")


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class Guard:
    """Outermost ASGI middleware. No exception leaves the service as a bare 500 (a registry
    outage is a 503 JSON, anything else a 500 JSON, both logged). For POST /v1/predict: the
    client's quota and the cap on requests in flight are checked before the body is read (429 /
    503 with Retry-After), and every request gets exactly one audit outcome: the gate writes
    one row per answered image; every other answer (a 4xx from any layer, a 5xx) gets one
    summary row, written before it is sent. Metrics count every outcome."""

    def __init__(self, app, gate, settings: ServiceSettings, metrics: Metrics, client_quota):
        self.app, self.gate, self.settings, self.metrics = app, gate, settings, metrics
        self.client_quota = client_quota
        self.inflight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not (scope["path"] == PREDICT_PATH and scope["method"] == "POST"):
            try:
                return await self.app(scope, receive, send)
            except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare 500
                return await failure_response(e, self.metrics)(scope, receive, send)
        state = scope.setdefault("state", {})
        state["client"] = _client(scope)
        started = time.perf_counter()
        held: list[dict] = []  # a refusal's messages, sent once its audit row is written
        response_started = False

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
                if await self._audit(held, state, started):
                    for m in held:
                        await send(m)
                else:  # no refusal leaves unaudited: while the log is unwritable, all get 503
                    state["audited"] = True
                    unavailable = failure_response(None)
                    await unavailable(scope, receive, send)
                held.clear()

        limit = self.settings.max_inflight
        wait = self.client_quota.wait(state["client"]) if self.client_quota else 0.0
        if wait:
            response = _json_error(429, "rate_limited", "this client is over its quota; retry "
                                   f"in {retry_after(wait)} s")  # fmt: skip
            response.headers["Retry-After"] = retry_after(wait)
            state["audit"] = (None, "rate_limited", f"client {state['client']} quota")
            return await response(scope, receive, guarded_send)
        if limit and self.inflight >= limit:
            response = _json_error(503, "busy", f"{limit} queries are in flight; retry shortly")
            response.headers["Retry-After"] = "1"
            return await response(scope, receive, guarded_send)
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, guarded_send)
        except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare 500
            if response_started:
                log.exception("failure after the answer started")
            else:
                await failure_response(e, self.metrics)(scope, receive, guarded_send)
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
            self.metrics.latency.observe(time.perf_counter() - started)

    async def _audit(self, held: list[dict], state: dict, started: float) -> bool:
        """Write the refusal's one audit row; False when the registry cannot take it."""
        status = next(m["status"] for m in held if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
        try:
            error = str(json.loads(body).get("error", ""))
        except (ValueError, AttributeError):
            error = ""
        audit = state.get("audit")
        try:
            await run_in_threadpool(self.gate.audit_refusal, started, state.get("images", 0),
                                    status, error, audit)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the registry is down: say so, in the log too
            log.error("refused query (%d %s) not audited: %s", status, error, type(e).__name__)
            self.metrics.registry_errors.inc()
            self.metrics.requests.labels("unavailable").inc()
            return False
        self.metrics.requests.labels(audit[1] if audit else refusal_outcome(status, error)).inc()
        return True


def create_app(
    gate: Gatekeeper, admin_key: str, settings: ServiceSettings | None = None
) -> FastAPI:
    """The service. ``admin_key`` guards the owner endpoints and /metrics (compared in constant
    time); ``settings`` bound its work (default :class:`ServiceSettings`)."""
    if not admin_key:
        raise ValueError("an admin key is required")
    settings = settings or ServiceSettings()
    expected = admin_key.encode()
    registry = gate.registry
    metrics = Metrics()
    batcher = None
    if settings.batching:
        batcher = Batcher(gate, settings.batch_wait_ms, settings.max_batch_images, metrics.batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if batcher is not None:
            batcher.stop()

    # FastAPIOffline: /docs and /redoc load Swagger UI / ReDoc from the package, not a CDN.
    app = FastAPIOffline(
        title="ActiveDaemon service",
        version=__version__,
        description="Answers image queries only for registered, active users whose invisible "
        "token the server reads from the image (ActiveDaemon, NDSS, Sec. V-D).",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.metrics = batcher, metrics
    client_quota = settings.client_quota()
    app.add_middleware(BodyLimit, max_bytes=gate.limits.max_request_bytes,
                       timeout_s=settings.body_timeout_s or None)  # fmt: skip
    app.add_middleware(Guard, gate=gate, settings=settings, metrics=metrics,
                       client_quota=client_quota)  # added last: the outermost  # fmt: skip

    def require_admin(key: Annotated[str | None, Depends(ADMIN_KEY_SCHEME)]) -> None:
        if key is None or not hmac.compare_digest(key.encode(), expected):
            raise ApiError(401, "unauthorized", f"missing or wrong {ADMIN_HEADER} header")

    # -- errors: always {"error", "reason"} JSON, and never a 5xx for a client's mistake -------
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
        response = _json_error(e.status, e.error, e.reason)
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        names = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        return _json_error(e.status_code, names.get(e.status_code, "http_error"), str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.url.path == "/v1/predict" and not ctype.startswith("multipart/form-data"):
            return _json_error(
                415, "unsupported_media_type", "send the images as multipart/form-data"
            )
        missing = [err for err in e.errors() if tuple(err.get("loc", ())) == ("body", "images")]
        if request.url.path == "/v1/predict" and missing:
            return _json_error(
                422, "empty_batch", "send at least one image file in the multipart field 'images'"
            )
        parts = [
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in e.errors()[:5]
        ]
        return _json_error(422, "invalid_request", "; ".join(parts) or "malformed request")

    # -- queries ------------------------------------------------------------------------------
    @app.post(
        "/v1/predict",
        response_model=PredictOut,
        responses=_errors(400, 403, 408, 413, 415, 422, 429, 500, 503),
        summary="classify images that carry a registered user's token",
    )
    async def predict(
        request: Request,
        images: Annotated[list[UploadFile], File(description="one or more PNG images")],
    ) -> dict:
        started = time.perf_counter()
        request.state.images = len(images)
        try:
            blobs = await _read_uploads(images)
            if client_quota is not None:  # charged by images, now that they are known
                client_quota.take(request.state.client, len(blobs), overdraw=True)
            if batcher is None:
                answer = await run_in_threadpool(gate.answer, blobs, started)
            else:
                batcher.start()
                decoded = await run_in_threadpool(gate.decode_images, blobs[:1])
                if len(blobs) > 1:  # probe the first image before decoding the rest
                    refusal = await batcher.probe(decoded, len(blobs))
                    if refusal is not None:
                        raise refusal
                    rest = await run_in_threadpool(gate.decode_images, blobs[1:], 1)
                    decoded = torch.cat([decoded, rest])
                answer = await batcher.answer(decoded, started)
        except ApiError as e:
            request.state.audit = e.audit  # the Guard writes the refusal's one row
            raise
        request.state.audited = True  # the gate wrote one row per answered image
        return answer

    async def _read_uploads(images: list[UploadFile]) -> list[bytes]:
        # No images at all never gets here: FastAPI refuses it first (422 empty_batch, above).
        if len(images) > gate.limits.max_images:
            raise ApiError(
                413, "too_many_images", f"at most {gate.limits.max_images} images a request"
            )
        blobs = []
        for i, upload in enumerate(images):
            data = await upload.read(gate.limits.max_bytes + 1)
            if len(data) > gate.limits.max_bytes:
                raise ApiError(413, "too_large", f"image {i} is over {gate.limits.max_bytes} bytes")
            blobs.append(data)
        return blobs

    # -- owner endpoints ----------------------------------------------------------------------
    # {user_id:path}: a given id may hold "/" (any printable ASCII), which a plain segment refuses.
    owner = [Depends(require_admin)]

    def _user_out(info, credential: str | None = None) -> dict:
        return {**info.to_dict(), "credential": credential}

    @app.post(
        "/v1/users",
        status_code=201,
        response_model=UserOut,
        responses=_errors(401, 409, 422),
        dependencies=owner,
        summary="register a user (random id unless one is given)",
    )
    def add_user(body: NewUser) -> dict:
        try:
            info, credential = gate.add_user(body.user_id, body.name)
        except UserExists as e:
            raise ApiError(409, "exists", str(e)) from e
        except ValueError as e:
            raise ApiError(422, "invalid_request", str(e)) from e
        log.info("user %s registered", info.user_id)
        return _user_out(info, credential)

    @app.get("/v1/users", response_model=UsersOut, responses=_errors(401), dependencies=owner)
    def list_users() -> dict:
        return {"users": [_user_out(u) for u in registry.list_users()]}

    def _get(user_id: str):
        try:
            return registry.get_user(user_id)
        except UserNotFound:
            raise ApiError(404, "not_found", f"no user {user_id!r}") from None

    @app.get(
        "/v1/users/{user_id:path}",
        response_model=UserDetailOut,
        responses=_errors(401, 404),
        dependencies=owner,
        summary="a user and their usage counts",
    )
    def show_user(user_id: str) -> dict:
        return {**_user_out(_get(user_id)), "usage": registry.usage(user_id)}

    def _set(user_id: str, active: bool) -> dict:
        _get(user_id)
        info = registry.set_active(user_id, active)
        log.info("user %s %s", user_id, info.status)
        return _user_out(info)

    @app.post(
        "/v1/users/{user_id:path}/revoke",
        response_model=UserOut,
        responses=_errors(401, 404),
        dependencies=owner,
        summary="revoke: the next query with this id gets 403",
    )
    def revoke(user_id: str) -> dict:
        return _set(user_id, False)

    @app.post(
        "/v1/users/{user_id:path}/activate",
        response_model=UserOut,
        responses=_errors(401, 404),
        dependencies=owner,
        summary="re-activate a revoked user",
    )
    def activate(user_id: str) -> dict:
        return _set(user_id, True)

    @app.get(
        "/metrics",
        responses=_errors(401),
        response_class=Response,
        summary="Prometheus metrics (admin key in X-Admin-Key or Authorization: Bearer)",
    )
    def prometheus_metrics(request: Request) -> Response:
        key = request.headers.get(ADMIN_HEADER) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = key or auth[7:].strip()
        if not hmac.compare_digest(key.encode(), expected):
            raise ApiError(401, "unauthorized", f"missing or wrong {ADMIN_HEADER} header")
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz", response_model=HealthOut)
    def healthz() -> dict:
        return {"status": "ok", "version": __version__, "ids": gate.describe_ids()}

    from activedaemon.serve.console import console_router  # the owner's web console, /console

    app.include_router(console_router(gate, admin_key))
    return app
