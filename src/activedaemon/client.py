"""Client of the ActiveDaemon service: makes the user's token locally and sends the query.

The distributed encoder stays on the user's side; the server only decodes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import httpx
import torch

from activedaemon.imageio import read_image, to_uint8
from activedaemon.tokens import TokenGenerator


class ServiceError(RuntimeError):
    """The service answered with an error (status, error code, reason)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{status} {error}: {reason}")
        self.status, self.error, self.reason = status, error, reason


def png_bytes(image: torch.Tensor) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes (lossless, so the token survives the trip)."""
    from PIL import Image

    array = to_uint8(image).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def raise_for_error(response: httpx.Response) -> dict:
    """The JSON body of a 2xx answer, or ServiceError with the server's reason."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.is_success:
        return body
    raise ServiceError(
        response.status_code, body.get("error", "http_error"), body.get("reason", response.text)
    )


class Client:
    """Query the service as user ``user_id`` with tokens made by ``encoder`` (name or folder).

    ``credential`` (text issued by the owner in authenticated-id mode) replaces the plain id.
    ``transport`` lets tests and benchmarks talk to an in-process app.
    """

    def __init__(
        self,
        url: str,
        user_id: str | None,
        encoder: str | Path | TokenGenerator,
        credential: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        from activedaemon.identity import validate_user_id
        from activedaemon.serve.authid import Credential

        if credential is None and user_id is None:
            raise ValueError("give a user id (or a credential in authenticated-id mode)")
        self.user_id = None if user_id is None else validate_user_id(user_id)
        self.credential = None if credential is None else Credential.parse(credential)
        self.generator = (
            encoder if isinstance(encoder, TokenGenerator) else TokenGenerator.load(encoder)
        )
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def authorize(self, images: torch.Tensor) -> torch.Tensor:
        """Authorized copies (8-bit values) of [0, 1] images (N, C, H, W) for this user."""
        gen = self.generator
        if self.credential is None:
            return gen.embed(images, self.user_id)
        c = self.credential
        messages = c.scheme.messages(c.number, c.key, images)
        return gen.embed_codewords(
            images, torch.stack([gen.codec.encode_message(m) for m in messages])
        )

    def predict(self, images: torch.Tensor) -> list[dict]:
        """Predictions for clean [0, 1] images (N, C, H, W): tokens are added here first."""
        return self.send(self.authorize(images))

    def send(self, images: torch.Tensor) -> list[dict]:
        """Send images as they are (already authorized, or not) -> the service's predictions."""
        files = [
            ("images", (f"{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)
        ]
        return raise_for_error(self.http.post("/v1/predict", files=files))["predictions"]

    def predict_files(self, paths: Sequence[str | Path], resize: bool = False) -> list[dict]:
        """Read image files, add the token, query."""
        gen = self.generator
        size, channels = gen.arch.image_size, gen.arch.channels
        return self.predict(torch.stack([read_image(p, channels, size, resize) for p in paths]))


class AdminClient:
    """The owner's calls (X-Admin-Key): add, list, show, revoke, activate users."""

    def __init__(self, url: str, admin_key: str, timeout: float = 30.0, transport=None) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"X-Admin-Key": admin_key},
        )

    def add(self, user_id: str | None = None, name: str = "") -> dict:
        body = {"name": name} | ({"user_id": user_id} if user_id is not None else {})
        return raise_for_error(self.http.post("/v1/users", json=body))

    def list(self) -> list[dict]:
        return raise_for_error(self.http.get("/v1/users"))["users"]

    def show(self, user_id: str) -> dict:
        return raise_for_error(self.http.get(f"/v1/users/{_quote(user_id)}"))

    def revoke(self, user_id: str) -> dict:
        return raise_for_error(self.http.post(f"/v1/users/{_quote(user_id)}/revoke"))

    def activate(self, user_id: str) -> dict:
        return raise_for_error(self.http.post(f"/v1/users/{_quote(user_id)}/activate"))


def _quote(user_id: str) -> str:
    from urllib.parse import quote

    return quote(user_id, safe="")
