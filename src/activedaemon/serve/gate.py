"""The gate in front of the protected model: decode the id from each image, check it, classify.

Independent of HTTP: :meth:`Gatekeeper.answer` takes the uploaded bytes and returns the response
body or raises :class:`ApiError`, and audits every image either way.
"""

from __future__ import annotations

import io
import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from activedaemon.serve.authid import (
    AuthIdScheme,
    Credential,
    stretch_master,
    user_key,
    user_key_v2,
)
from activedaemon.serve.policy import TokenBuckets, retry_after
from activedaemon.serve.registry import Registry, UserInfo
from activedaemon.tokens import TokenGenerator

log = logging.getLogger(__name__)
MODES = {1: ("L",), 3: ("RGB",)}
# Magic bytes of the formats the decoder may be allowed to read; nothing else reaches Pillow.
MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",)}
FORBIDDEN = "forbidden"
# The one reason every 403 gives: which check failed (no token, unknown user, revoked, bad MAC)
# goes to the audit log only, so that the answers are no oracle for the registry.
FORBIDDEN_REASON = (
    "the query was refused: every image must carry the valid token of a registered, active user"
)


class ApiError(Exception):
    """A client-visible failure: HTTP status, short error code, and the reason in words.

    ``audit`` optionally carries what the audit log should record for the refused request:
    (user id or None, outcome, detail); ``headers`` extra response headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        error: str,
        reason: str,
        audit: tuple[str | None, str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.audit = status, error, reason, audit
        self.headers = headers


@dataclass(frozen=True)
class Limits:
    """What one /v1/predict request may carry."""

    max_images: int = 64
    max_bytes: int = 1_000_000  # per image file
    max_pixels: int = 4_000_000  # per image, checked from the header before decoding
    # Image formats the decoder reads (Pillow format names). PNG is lossless, which the shipped
    # encoder's tokens need; add JPEG only for an encoder trained with JPEG noise.
    formats: tuple[str, ...] = ("PNG",)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(MAGIC))
        if unknown or not self.formats:
            raise ValueError(f"image formats must be among {sorted(MAGIC)}, got {self.formats}")

    @property
    def max_request_bytes(self) -> int:
        return self.max_images * self.max_bytes + 256 * 1024  # room for multipart framing


def decode_upload(data: bytes, index: int, channels: int, size: int, limits: Limits):
    """Bytes of one upload -> (C, H, W) tensor in [0, 1], or ApiError saying what is wrong.

    Only the allowed formats reach Pillow (checked by magic bytes, and Pillow is told to try no
    other plugin); the pixel count is checked from the header before any pixel is decoded. The
    reasons are ours, in plain words: Pillow's own messages never reach the client."""
    what = f"image {index}"
    allowed = " or ".join(limits.formats)
    if not any(data.startswith(m) for f in limits.formats for m in MAGIC[f]):
        raise ApiError(415, "unsupported_format", f"{what} is not a {allowed} file")
    try:
        with Image.open(io.BytesIO(data), formats=list(limits.formats)) as im:
            width, height, mode = im.width, im.height, im.mode
            frames = getattr(im, "n_frames", 1)
            pixels = width * height
            if pixels > limits.max_pixels:
                raise ApiError(
                    413, "too_many_pixels", f"{what} has {pixels} pixels (max {limits.max_pixels})"
                )
            if frames != 1:
                raise ApiError(415, "unsupported_format", f"{what} is animated ({allowed} only)")
            if mode not in MODES[channels]:
                want = "3-channel RGB" if channels == 3 else "1-channel greyscale (L)"
                raise ApiError(
                    400, "wrong_channels", f"{what} has mode {mode}; this model takes {want} images"
                )
            if (width, height) != (size, size):
                raise ApiError(
                    400,
                    "wrong_size",
                    f"{what} is {width}x{height}; the service takes {size}x{size} (add the token "
                    "at that size: resizing afterwards destroys it)",
                )
            im.load()
            array = np.asarray(im, dtype=np.float32) / 255.0
    except ApiError:
        raise
    except Image.DecompressionBombError:  # Pillow's own, larger limit, hit while opening
        raise ApiError(
            413, "too_many_pixels", f"{what} declares too many pixels (max {limits.max_pixels})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any parser failure on untrusted bytes is bad input
        log.debug("%s not decoded: %r", what, e)
        raise ApiError(400, "not_an_image", f"{what} is not a readable {allowed} image") from None
    if array.shape[:2] != (size, size):  # a header that lied about the decoded size
        raise ApiError(400, "not_an_image", f"{what} is not a readable {allowed} image")
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


class Gatekeeper:
    """Decoder + registry + protected classifier. Thread-safe; inference runs one at a time."""

    def __init__(
        self,
        generator: TokenGenerator,
        model: torch.nn.Module,
        registry: Registry,
        class_names: list[str],
        *,
        limits: Limits | None = None,
        scheme: AuthIdScheme | None = None,
        master: bytes | None = None,
        user_quota: TokenBuckets | None = None,
    ) -> None:
        if (scheme is None) != (master is None):
            raise ValueError("authenticated ids need both a scheme and the master secret")
        self.generator, self.model, self.registry = generator, model.eval(), registry
        self.class_names = list(class_names)
        self.limits = limits or Limits()
        self.scheme, self._master = scheme, master
        self._stretched = None if master is None else stretch_master(master, registry.key_epoch)
        self.user_quota = user_quota  # answered images a second per user (None: no quota)
        self._lock = threading.Lock()  # 2 forward passes at once only fight over the cores

    def describe_ids(self) -> str:
        return "plain 8-character ids" if self.scheme is None else self.scheme.describe()

    def add_user(self, user_id: str | None, name: str) -> tuple[UserInfo, str | None]:
        """Register a user; in authenticated mode also return their credential."""
        info = self.registry.add_user(user_id, name)
        if self.scheme is None:
            return info, None
        if info.number > self.scheme.max_users:
            self.registry.set_active(info.user_id, False)
            raise ValueError(f"this layout holds {self.scheme.max_users} users; use more user bits")
        return info, str(Credential(info.number, self.user_key(info), self.scheme))

    def user_key(self, user: UserInfo) -> bytes:
        """The user's MAC key: salted, under this registry's epoch (v2), or the v1 key of a user
        registered before salts existed."""
        if user.key_salt is None:
            return user_key(self._master, user.number)
        salt = bytes.fromhex(user.key_salt)
        return user_key_v2(self._stretched, self.registry.key_epoch, user.number, salt)

    # -- the query path -----------------------------------------------------------------------
    def identify_users(
        self, images: torch.Tensor
    ) -> tuple[list[UserInfo | None], list[str], list[str | None]]:
        """Per image: the registered user its token names (or None); the outcome (``ok``,
        ``revoked``, ``unknown``, ``undecodable`` or ``bad_mac``); and the id the audit log
        records (the decoded plain id, or the registered user an authenticated token claims,
        also when its MAC fails, so that forgeries show in that user's usage)."""
        probs = self.generator.decode_probs(images)
        if self.scheme is None:
            ids = self.generator.codec.decode_batch(probs)
            found = {u.user_id: u for u in self.registry.users(user_ids=[i for i in ids if i])}
            users = [found.get(i) if i else None for i in ids]
            outcomes = [
                "undecodable" if i is None else "unknown" if u is None else _status(u)
                for i, u in zip(ids, users, strict=True)
            ]
            return users, outcomes, list(ids)
        messages = [self.generator.codec.decode_detailed(bits).message for bits in probs]
        claimed = [None if m is None else self.scheme.number_of(m) or None for m in messages]
        found = {u.number: u for u in self.registry.users(numbers=[n for n in claimed if n])}
        users, outcomes, named = [], [], []
        for message, number, image in zip(messages, claimed, images, strict=True):
            user = found.get(number) if number else None
            named.append(user.user_id if user else None)
            if number is None:
                users.append(None)
                outcomes.append("undecodable")
            elif user is None:
                users.append(None)
                outcomes.append("unknown")
            elif not self.scheme.verify_key(message, self.user_key(user), image):
                users.append(None)
                outcomes.append("bad_mac")
            else:
                users.append(user)
                outcomes.append(_status(user))
        return users, outcomes, named

    def decode_images(self, blobs: list[bytes], first: int = 0) -> torch.Tensor:
        """The uploads as one (N, C, H, W) tensor, or ApiError for the first bad one (image
        numbers in the reasons start at ``first``)."""
        size, channels = self.generator.arch.image_size, self.generator.arch.channels
        return torch.stack(
            [decode_upload(b, first + i, channels, size, self.limits) for i, b in enumerate(blobs)]
        )

    def answer(self, blobs: list[bytes], started: float | None = None) -> dict:
        """The /v1/predict body for these uploads, or ApiError; one request at a time (the
        service batches concurrent requests with :meth:`probe_batch` and :meth:`answer_batch`
        instead). A request of several images is probed on its first one before the rest is
        decoded."""
        started = time.perf_counter() if started is None else started
        images = self.decode_images(blobs[:1])
        if len(blobs) > 1:
            with self._lock:
                refusal = self.probe_batch([images], [len(blobs)])[0]
            if refusal is not None:
                raise refusal
            images = torch.cat([images, self.decode_images(blobs[1:], first=1)])
        with self._lock:
            result = self.answer_batch([images], [started])[0]
        if isinstance(result, ApiError):
            raise result
        return result

    def probe_batch(self, firsts: list[torch.Tensor], sizes: list[int]) -> list[ApiError | None]:
        """Judge the first image of each multi-image request (one decoder pass for all): a
        request whose first image is refused is refused (403, audited) without decoding the
        rest, so that an unauthenticated 64-image batch costs one image's decoding, not 64.
        None for a request that goes on to :meth:`answer_batch`."""
        _, outcomes, named = self.identify_users(torch.cat(firsts))
        results: list[ApiError | None] = []
        for outcome, name, n in zip(outcomes, named, sizes, strict=True):
            if outcome == "ok":
                results.append(None)
                continue
            detail = f"image 0 {outcome}; {outcome}=1 unexamined={n - 1}"
            detail += f"; ids {name}" if name else ""
            audit = (name, outcome, detail)
            results.append(ApiError(403, FORBIDDEN, FORBIDDEN_REASON, audit=audit))
        return results

    def answer_batch(self, requests: list[torch.Tensor], started: list[float]) -> list:
        """Answer several requests' decoded images with one decoder pass, one registry lookup,
        one classifier pass and one audit write: per request its /v1/predict body, or the
        ApiError that refuses it. Each request is judged on its own images only: a refused image
        refuses its own request and no other. Answered images are audited (one row each) before
        this returns; a refusal carries its one summary row in ``ApiError.audit`` for the caller
        to write (:meth:`audit_refusal`)."""
        sizes = [len(x) for x in requests]
        images = torch.cat(requests)
        users, outcomes, named = self.identify_users(images)
        results: list = [None] * len(requests)
        spans = [(a - n, a) for n, a in zip(sizes, itertools.accumulate(sizes), strict=True)]
        for r, (a, b) in enumerate(spans):
            try:
                self._refuse_unless_ok(outcomes[a:b], named[a:b])
                self._charge_quota(users[a:b])
            except ApiError as e:
                results[r] = e
        todo = [r for r, res in enumerate(results) if res is None]
        if not todo:
            return results
        rows = torch.cat([torch.arange(*spans[r]) for r in todo])
        with torch.inference_mode():
            probs = torch.softmax(self.model(images[rows]), dim=1)
        # Revocation is re-checked after the forward pass, just before answering: a revoke that
        # returned while this request was in the model refuses it.
        numbers = [users[i].number for i in rows.tolist()]
        fresh = {u.number: u for u in self.registry.users(numbers=numbers)}
        answers, audit, at = {}, [], 0
        for r in todo:
            a, b = spans[r]
            mine, p = users[a:b], probs[at : at + b - a]
            at += b - a
            now = [_status(fresh[u.number]) if u.number in fresh else "unknown" for u in mine]
            try:
                self._refuse_unless_ok(now, named[a:b])
            except ApiError as e:
                results[r] = e
                continue
            ms = 1000 * (time.perf_counter() - started[r])
            audit += [(u.user_id, "ok", ms) for u in mine]
            answers[r] = self._body(mine, p)
        self.registry.log_queries(audit)  # before any answer leaves
        for r, body in answers.items():
            results[r] = body
        return results

    def _body(self, users: list[UserInfo], probs: torch.Tensor) -> dict:
        labels = probs.argmax(1).tolist()
        return {
            "predictions": [
                {
                    "user_id": u.user_id,
                    "label": y,
                    "class_name": self.class_names[y],
                    "probabilities": [round(p, 6) for p in row.tolist()],
                }
                for u, y, row in zip(users, labels, probs, strict=True)
            ]
        }

    def _charge_quota(self, users: list[UserInfo]) -> None:
        """429 unless each user of the request has the quota for their images."""
        if self.user_quota is None:
            return
        for uid, n in Counter(u.user_id for u in users).items():
            wait = self.user_quota.take(uid, n)
            if wait:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"user {uid} is over their quota; retry in {retry_after(wait)} s",
                    audit=(uid, "rate_limited", f"user quota; {n} images"),
                    headers={"Retry-After": retry_after(wait)},
                )

    @staticmethod
    def _refuse_unless_ok(outcomes: list[str], named: list[str | None]) -> None:
        """403 with the generic reason unless every image is ok; the audit detail says which
        image failed first and how, the outcome of every image and the ids the batch named."""
        if all(o == "ok" for o in outcomes):
            return
        bad = next(i for i, o in enumerate(outcomes) if o != "ok")
        counts = " ".join(f"{o}={n}" for o, n in sorted(Counter(outcomes).items()))
        ids = ",".join(sorted({i for i in named if i}))
        detail = f"image {bad} {outcomes[bad]}; {counts}" + (f"; ids {ids}" if ids else "")
        raise ApiError(403, FORBIDDEN, FORBIDDEN_REASON, audit=(named[bad], outcomes[bad], detail))

    def audit_refusal(
        self, started: float, images: int, status: int, error: str, audit=None
    ) -> None:
        """The one audit row of a refused /v1/predict request: the gate's detail when it got
        that far, else the HTTP status and error code (:func:`refusal_outcome`)."""
        ms = 1000 * (time.perf_counter() - started)
        if audit is None:
            audit = (None, refusal_outcome(status, error), f"{status} {error}")
        user_id, outcome, detail = audit
        self.registry.log_refusal(user_id, outcome, ms, images, detail)


REFUSAL_OUTCOMES = {"busy": "busy", "request_timeout": "timeout", "rate_limited": "rate_limited"}


def refusal_outcome(status: int, error: str) -> str:
    """The audit outcome of a refusal that did not get as far as the gate's verdict."""
    if error in REFUSAL_OUTCOMES:
        return REFUSAL_OUTCOMES[error]
    if status == 413:
        return "too_large"
    if status == 503:
        return "unavailable"
    return "error" if status >= 500 else "bad_input"


def _status(user: UserInfo) -> str:
    return "ok" if user.active else "revoked"
