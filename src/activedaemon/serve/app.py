"""The identity-checked inference service (paper Sec. V-D) as a FastAPI app.

A thin shell over :class:`Gatekeeper` (decode, verify, classify) and the :class:`Registry`: the
routes parse requests, enforce size limits and the admin key, and turn outcomes into JSON. One
module-level router per resource (queries, owner endpoints, operations) whose routes take what
they need as dependencies (the gate, the registry, the admin key); :func:`create_app` puts the
service's objects in ``app.state``, adds the front door (``serve.guard``) and includes them.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time.
import contextlib
import logging
import time
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from activedaemon import __version__
from activedaemon.serve.batching import Batcher
from activedaemon.serve.gate import ApiError, Gatekeeper
from activedaemon.serve.guard import (
    ADMIN_HEADER,
    PREDICT_PATH,
    BodyLimit,
    DocsHeaders,
    Guard,
    KeyGuard,
    RefusalLog,
    json_error,
)
from activedaemon.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from activedaemon.serve.metrics import Metrics
from activedaemon.serve.policy import ServiceSettings
from activedaemon.serve.registry import NAME_MAX, Registry, UserExists, UserNotFound

log = logging.getLogger(__name__)
__all__ = ["BodyLimit", "Guard", "PREDICT_PATH", "create_app"]
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
        "description": "over the client's or the user's quota, or the client's share of the "
        "queries in flight (see Retry-After)",
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
    return json_error(status, error, reason)


# -- dependencies: what a route needs, read from the app it runs in ------------------------------
def get_gate(request: Request) -> Gatekeeper:
    return request.app.state.gate


def get_registry(request: Request) -> Registry:
    return request.app.state.gate.registry


def require_admin(request: Request, key: Annotated[str | None, Depends(ADMIN_KEY_SCHEME)]) -> None:
    """The owner's key. The Guard has checked (and rationed) it before the body was read; this
    states it in the OpenAPI contract, and is a second line."""
    if not request.app.state.keys.matches(key):
        raise ApiError(401, "unauthorized", f"missing or wrong {ADMIN_HEADER} header")


GateDep = Annotated[Gatekeeper, Depends(get_gate)]
RegistryDep = Annotated[Registry, Depends(get_registry)]


# -- errors: always {"error", "reason"} JSON, and never a 5xx for a client's mistake -------------
async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
    response = _json_error(e.status, e.error, e.reason)
    response.headers.update(e.headers or {})
    return response


async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
    names = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    return _json_error(e.status_code, names.get(e.status_code, "http_error"), str(e.detail))


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    ctype = request.headers.get("content-type", "")
    if request.url.path == PREDICT_PATH and not ctype.startswith("multipart/form-data"):
        return _json_error(415, "unsupported_media_type", "send the images as multipart/form-data")
    missing = [err for err in e.errors() if tuple(err.get("loc", ())) == ("body", "images")]
    if request.url.path == PREDICT_PATH and missing:
        return _json_error(
            422, "empty_batch", "send at least one image file in the multipart field 'images'"
        )
    parts = [
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
        for err in e.errors()[:5]
    ]
    return _json_error(422, "invalid_request", "; ".join(parts) or "malformed request")


# -- queries ------------------------------------------------------------------------------------
queries = APIRouter()


@queries.post(
    PREDICT_PATH,
    response_model=PredictOut,
    responses=_errors(400, 403, 408, 413, 415, 422, 429, 500, 503),
    summary="classify images that carry a registered user's token",
)
async def predict(
    request: Request,
    gate: GateDep,
    images: Annotated[list[UploadFile], File(description="one or more PNG images")],
) -> dict:
    started = time.perf_counter()
    request.state.images = len(images)
    client_quota = request.app.state.client_quota
    if client_quota is not None and len(images) > 1:  # charged by images, now counted
        client_quota.take(request.state.client, len(images) - 1, overdraw=True)
        request.state.charged = float(len(images))
    batcher = request.app.state.batcher
    try:
        blobs = await _read_uploads(gate, images)
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


async def _read_uploads(gate: Gatekeeper, images: list[UploadFile]) -> list[bytes]:
    # No images at all never gets here: FastAPI refuses it first (422 empty_batch, above).
    if len(images) > gate.limits.max_images:
        raise ApiError(413, "too_many_images", f"at most {gate.limits.max_images} images a request")
    blobs = []
    for i, upload in enumerate(images):
        data = await upload.read(gate.limits.max_bytes + 1)
        if len(data) > gate.limits.max_bytes:
            raise ApiError(413, "too_large", f"image {i} is over {gate.limits.max_bytes} bytes")
        blobs.append(data)
    return blobs


# -- owner endpoints ------------------------------------------------------------------------------
# {user_id:path}: a given id may hold "/" (any printable ASCII), which a plain segment refuses.
owner = APIRouter(dependencies=[Depends(require_admin)])


def _user_out(info, credential: str | None = None) -> dict:
    return {**info.to_dict(), "credential": credential}


@owner.post(
    "/v1/users",
    status_code=201,
    response_model=UserOut,
    responses=_errors(401, 409, 422),
    summary="register a user (random id unless one is given)",
)
def add_user(body: NewUser, gate: GateDep) -> dict:
    try:
        info, credential = gate.add_user(body.user_id, body.name)
    except UserExists as e:
        raise ApiError(409, "exists", str(e)) from e
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e)) from e
    log.info("user %s registered", info.user_id)
    return _user_out(info, credential)


@owner.get("/v1/users", response_model=UsersOut, responses=_errors(401))
def list_users(registry: RegistryDep) -> dict:
    return {"users": [_user_out(u) for u in registry.list_users()]}


def _get(registry: Registry, user_id: str):
    try:
        return registry.get_user(user_id)
    except UserNotFound:
        raise ApiError(404, "not_found", f"no user {user_id!r}") from None


@owner.get(
    "/v1/users/{user_id:path}",
    response_model=UserDetailOut,
    responses=_errors(401, 404),
    summary="a user and their usage counts",
)
def show_user(user_id: str, registry: RegistryDep) -> dict:
    return {**_user_out(_get(registry, user_id)), "usage": registry.usage(user_id)}


def _set(registry: Registry, user_id: str, active: bool) -> dict:
    _get(registry, user_id)
    info = registry.set_active(user_id, active)
    log.info("user %s %s", user_id, info.status)
    return _user_out(info)


@owner.post(
    "/v1/users/{user_id:path}/revoke",
    response_model=UserOut,
    responses=_errors(401, 404),
    summary="revoke: the next query with this id gets 403",
)
def revoke(user_id: str, registry: RegistryDep) -> dict:
    return _set(registry, user_id, False)


@owner.post(
    "/v1/users/{user_id:path}/activate",
    response_model=UserOut,
    responses=_errors(401, 404),
    summary="re-activate a revoked user",
)
def activate(user_id: str, registry: RegistryDep) -> dict:
    return _set(registry, user_id, True)


# -- operations ---------------------------------------------------------------------------------
operations = APIRouter()


@operations.get(
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
    if not request.app.state.keys.matches(key):
        raise ApiError(401, "unauthorized", f"missing or wrong {ADMIN_HEADER} header")
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@operations.get("/healthz", response_model=HealthOut)
def healthz(gate: GateDep) -> dict:
    return {"status": "ok", "version": __version__, "ids": gate.describe_ids()}


# -- the app --------------------------------------------------------------------------------------
def create_app(
    gate: Gatekeeper, admin_key: str, settings: ServiceSettings | None = None
) -> FastAPI:
    """The service. ``admin_key`` guards the owner endpoints and /metrics (compared in constant
    time); ``settings`` bound its work (default :class:`ServiceSettings`)."""
    if not admin_key:
        raise ValueError("an admin key is required")
    settings = settings or ServiceSettings()
    keys = KeyGuard(admin_key, settings.key_attempts_per_s, settings.key_attempts_total_per_s,
                    settings.workers)  # fmt: skip
    # Each of ``workers`` processes writes its rows at 1 / workers of the rate: the service as a
    # whole stays at one row per address and interval.
    refusals = RefusalLog(gate.registry, settings.refusal_interval_s * settings.workers)
    metrics = Metrics()
    batcher = None
    if settings.batching:
        batcher = Batcher(gate, settings.batch_wait_ms, settings.max_batch_images, metrics.batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await refusals.flush()  # the counted refusals' summary rows
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
    client_quota = settings.client_quota()
    state = app.state
    state.gate, state.settings, state.batcher, state.metrics = gate, settings, batcher, metrics
    state.keys, state.refusals, state.client_quota = keys, refusals, client_quota
    app.add_middleware(BodyLimit, max_bytes=gate.limits.max_request_bytes,
                       timeout_s=settings.body_timeout_s or None,
                       small_bytes=settings.small_body_bytes)  # fmt: skip
    app.add_middleware(DocsHeaders)
    app.add_middleware(Guard, gate=gate, settings=settings, metrics=metrics,
                       client_quota=client_quota, keys=keys,
                       refusals=refusals)  # added last: the outermost  # fmt: skip
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    for router in (queries, owner, operations):
        app.include_router(router)

    from activedaemon.serve.console import mount_console  # the owner's web console, /console

    mount_console(app, gate, admin_key, keys=keys, refusals=refusals)
    return app
