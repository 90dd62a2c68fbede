"""The gate in front of the protected model: decode the id from each image, check it, classify.

Independent of HTTP: :meth:`Gatekeeper.answer` takes the uploaded bytes and returns the response
body or raises :class:`ApiError`, and audits every image either way.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from activedaemon.imageio import read_image
from activedaemon.serve.authid import AuthIdScheme, Credential, user_key
from activedaemon.serve.registry import Registry, UserInfo
from activedaemon.tokens import TokenGenerator

MODES = {1: ("L",), 3: ("RGB",)}


class ApiError(Exception):
    """A client-visible failure: HTTP status, short error code, and the reason in words."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


@dataclass(frozen=True)
class Limits:
    """What one /v1/predict request may carry."""

    max_images: int = 64
    max_bytes: int = 1_000_000  # per image file
    max_pixels: int = 4_000_000  # per image, checked from the header before decoding

    @property
    def max_request_bytes(self) -> int:
        return self.max_images * self.max_bytes + 256 * 1024  # room for multipart framing


def decode_upload(data: bytes, index: int, channels: int, size: int, limits: Limits):
    """Bytes of one upload -> (C, H, W) tensor in [0, 1], or ApiError saying what is wrong."""
    what = f"image {index}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height, mode = im.width, im.height, im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ApiError(400, "not_an_image", f"{what} is not a readable image: {e}") from None
    if width * height > limits.max_pixels:
        raise ApiError(
            413, "too_many_pixels", f"{what} has {width * height} pixels (max {limits.max_pixels})"
        )
    if mode not in MODES[channels]:
        want = "3-channel RGB" if channels == 3 else "1-channel greyscale (L)"
        raise ApiError(
            400, "wrong_channels", f"{what} has mode {mode}; this model takes {want} images"
        )
    if (width, height) != (size, size):
        raise ApiError(
            400,
            "wrong_size",
            f"{what} is {width}x{height}; the service takes {size}x{size} (add the token at "
            "that size: resizing afterwards destroys it)",
        )
    try:
        return read_image(data, channels, size)
    except ValueError as e:  # truncated or corrupt beyond the header
        raise ApiError(400, "not_an_image", f"{what}: {e}") from None


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
    ) -> None:
        if (scheme is None) != (master is None):
            raise ValueError("authenticated ids need both a scheme and the master secret")
        self.generator, self.model, self.registry = generator, model.eval(), registry
        self.class_names = list(class_names)
        self.limits = limits or Limits()
        self.scheme, self._master = scheme, master
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
        key = user_key(self._master, info.number)
        return info, str(Credential(info.number, key, self.scheme))

    # -- the query path -----------------------------------------------------------------------
    def identify_users(self, images: torch.Tensor) -> tuple[list[UserInfo | None], list[str], list]:
        """Per image: the registered user its token names (or None), the outcome so far, and the
        decoded id for the audit log (plain ids; None where none was read)."""
        probs = self.generator.decode_probs(images)
        if self.scheme is None:
            ids = self.generator.codec.decode_batch(probs)
            found = {u.user_id: u for u in self.registry.users(user_ids=[i for i in ids if i])}
            users = [found.get(i) if i else None for i in ids]
            outcomes = ["undecodable" if i is None else "unknown" for i in ids]
            return users, outcomes, ids
        numbers, outcomes = [], []
        for bits, image in zip(probs, images, strict=True):
            message = self.generator.codec.decode_detailed(bits).message
            number = None if message is None else self.scheme.verify(message, self._master, image)
            numbers.append(number)
            outcomes.append(
                "undecodable" if message is None else "bad_mac" if number is None else "unknown"
            )
        found = {u.number: u for u in self.registry.users(numbers=[n for n in numbers if n])}
        users = [found.get(n) if n else None for n in numbers]
        return users, outcomes, [u.user_id if u else None for u in users]

    def answer(self, blobs: list[bytes], started: float | None = None) -> dict:
        """The /v1/predict body for these uploads, or ApiError. Every decoded image is audited;
        the caller audits requests rejected as bad input (:meth:`audit_bad_input`)."""
        started = time.perf_counter() if started is None else started
        size, channels = self.generator.arch.image_size, self.generator.arch.channels

        def audit(rows: list[tuple[str | None, str]]) -> None:
            ms = 1000 * (time.perf_counter() - started)
            self.registry.log_queries((u, o, ms) for u, o in rows)

        images = torch.stack(
            [decode_upload(b, i, channels, size, self.limits) for i, b in enumerate(blobs)]
        )
        with self._lock:
            users, outcomes, decoded = self.identify_users(images)
        for i, user in enumerate(users):
            if user is not None:
                outcomes[i] = "ok" if user.active else "revoked"
        if any(o != "ok" for o in outcomes):
            bad = next(i for i, o in enumerate(outcomes) if o != "ok")
            rejected = [o if o != "ok" else "batch_rejected" for o in outcomes]
            audit(list(zip(decoded, rejected, strict=True)))
            raise ApiError(403, "forbidden", self._reason(bad, users[bad], outcomes[bad]))
        with self._lock, torch.inference_mode():
            probs = torch.softmax(self.model(images), dim=1)
        labels = probs.argmax(1).tolist()
        audit([(u.user_id, "ok") for u in users])
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

    def audit_bad_input(self, started: float) -> None:
        """One audit row for a /v1/predict request refused before any image was decoded."""
        self.registry.log_queries([(None, "bad_input", 1000 * (time.perf_counter() - started))])

    def _reason(self, index: int, user: UserInfo | None, outcome: str) -> str:
        what = f"image {index}"
        if outcome == "undecodable":
            return f"{what} carries no readable user token (clean, damaged or foreign image)"
        if outcome == "bad_mac":
            return f"{what} carries a token whose authentication code does not verify"
        if outcome == "revoked":
            return f"{what}: user {user.user_id!r} is revoked"
        return f"{what}: the user its token names is not registered"
