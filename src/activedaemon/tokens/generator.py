"""TokenGenerator: embed a user's token into images, read the user back, save and load."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from activedaemon.cards import ENCODER_SCHEMA, EncoderCard, read_card
from activedaemon.identity import CODE_BITS, IdentityCodec
from activedaemon.imageio import round_8bit
from activedaemon.runs import CARD_FILE, WEIGHTS_FILE
from activedaemon.tokens.networks import ArchConfig, Decoder, Encoder

CARD_SCHEMA = ENCODER_SCHEMA  # of an encoder's card.yaml (activedaemon.cards)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"


def shipped_encoders() -> list[str]:
    """Names of the encoders that ship with the package (loadable by name)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CARD_FILE).is_file())


def resolve_encoder_path(name_or_path: str | Path) -> Path:
    """A folder with card.yaml + weights.pt, or the name of a shipped encoder."""
    path = Path(name_or_path).expanduser()
    if (path / CARD_FILE).is_file():
        return path
    if (SHIPPED_DIR / str(name_or_path) / CARD_FILE).is_file():
        return SHIPPED_DIR / str(name_or_path)
    raise FileNotFoundError(
        f"no encoder at {name_or_path!r}: expected a folder with {CARD_FILE} and {WEIGHTS_FILE} "
        f"(made by `activedaemon train-encoder --out DIR`) or a shipped name {shipped_encoders()}"
    )


def weights_sha256(name_or_path: str | Path) -> str:
    """SHA-256 of an encoder's weights file (run folder or shipped name)."""
    weights = resolve_encoder_path(name_or_path) / WEIGHTS_FILE
    return hashlib.sha256(weights.read_bytes()).hexdigest()


@cache
def _shipped_digests() -> frozenset[str]:
    return frozenset(weights_sha256(name) for name in shipped_encoders())


def is_shipped_encoder(name_or_path: str | Path) -> bool:
    """Whether the encoder's weights are one of the encoders shipped with the package (wherever
    the file lies): anyone who installs the package holds them and can make tokens that wake a
    model protected with it, for any user id. A production model needs the owner's own encoder
    (`activedaemon train-encoder`), kept like a key."""
    return weights_sha256(name_or_path) in _shipped_digests()


class TokenGenerator:
    """The trained encoder G_e and decoder of Algorithm 1, with the identity codec around them.

    Images are float tensors in [0, 1], (N, C, H, W), at the card's size and channel count.
    """

    def __init__(
        self,
        arch: ArchConfig,
        encoder: Encoder | None = None,
        decoder: Decoder | None = None,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.arch = arch
        # channels_last: about 1.7x faster convolutions on CPU, and one memory format for trained
        # and loaded networks, so that both give bit-identical outputs.
        cl = torch.channels_last
        self.encoder = (encoder or Encoder(arch)).to(memory_format=cl).eval()
        self.decoder = (decoder or Decoder(arch)).to(memory_format=cl).eval()
        self.card = card or {}
        self.weights_sha256: str | None = None  # of the weights file it was loaded from
        self.codec = IdentityCodec()

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device: str | torch.device) -> TokenGenerator:
        self.encoder.to(device)
        self.decoder.to(device)
        return self

    # -- inputs ---------------------------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        want = (self.arch.channels, self.arch.image_size, self.arch.image_size)
        if (
            not isinstance(images, torch.Tensor)
            or images.ndim != 4
            or tuple(images.shape[1:]) != want
        ):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, want))}), got {got}"
            )
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
        if images.numel() and (torch.isnan(images).any() or images.min() < 0 or images.max() > 1):
            raise ValueError("images must be in [0, 1] without NaN")
        return images

    def codewords(self, user_ids: str | Sequence[str], n: int) -> torch.Tensor:
        """One id for all n images, or one id per image -> (n, 127) codewords."""
        if isinstance(user_ids, str):
            return self.codec.encode(user_ids).expand(n, -1)
        if len(user_ids) != n:
            raise ValueError(f"got {len(user_ids)} user ids for {n} images")
        return self.codec.encode_batch(list(user_ids))

    # -- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_codewords(
        self,
        images: torch.Tensor,
        codewords: torch.Tensor,
        quantize: bool = True,
        batch_size: int = 512,
    ) -> torch.Tensor:
        """x_a = clamp(x + G_e(x, s)), rounded to 8 bits when ``quantize`` (as stored images)."""
        images = self.check_images(images)
        out = None  # filled batch by batch: no list of parts beside the result
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(self.device)
            s = codewords[i : i + batch_size].to(self.device, torch.float32)
            x_a = (x + self.encoder(x, s)).clamp_(0.0, 1.0)
            if quantize:
                x_a = round_8bit(x_a)
            if out is None:
                shape = (len(images), *x_a.shape[1:])
                out = torch.empty(shape, dtype=x_a.dtype, device=images.device)
            out[i : i + len(x_a)] = x_a
        return out if out is not None else images.clone()

    def embed(
        self, images: torch.Tensor, user_ids: str | Sequence[str], quantize: bool = True
    ) -> torch.Tensor:
        """Authorized images for ``user_ids`` (one id for all, or one per image)."""
        return self.embed_codewords(images, self.codewords(user_ids, len(images)), quantize)

    def token(
        self, images: torch.Tensor, user_ids: str | Sequence[str], quantize: bool = True
    ) -> torch.Tensor:
        """The token t = x_a - x actually added (after clamping and rounding)."""
        return self.embed(images, user_ids, quantize) - images

    @torch.inference_mode()
    def decode_probs(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Bit probabilities (N, 127) read from images."""
        images = self.check_images(images)
        out = [
            torch.sigmoid(self.decoder(images[i : i + batch_size].to(self.device))).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, CODE_BITS)

    def identify(self, images: torch.Tensor) -> list[str | None]:
        """The user id each image carries, or None (clean, damaged or foreign images)."""
        return self.codec.decode_batch(self.decode_probs(images))

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path, **card_fields: Any) -> Path:
        """Write ``weights.pt`` and ``card.yaml`` (architecture + extra fields) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        values = {**self.card, **card_fields, "arch": self.arch.to_dict()}
        values.update(kind="encoder", schema=CARD_SCHEMA)
        self.card = EncoderCard.from_dict(values).to_dict()
        state = {"encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict()}
        tmp = path / (WEIGHTS_FILE + ".tmp")
        tmp.touch(mode=0o600)  # the encoder is the key: readable by its owner only
        tmp.chmod(0o600)
        torch.save(state, tmp)
        tmp.replace(path / WEIGHTS_FILE)
        (path / CARD_FILE).write_text(yaml.safe_dump(self.card, sort_keys=False))
        return path

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> TokenGenerator:
        """Load from a folder written by :meth:`save` (a train-encoder run) or a shipped name."""
        path = resolve_encoder_path(name_or_path)
        card = read_card(path, "encoder")  # typed and migrated; refuses a card without arch
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path} has a card but no {WEIGHTS_FILE}")
        gen = cls(ArchConfig(**card.arch), card=card.to_dict())
        weights = (path / WEIGHTS_FILE).read_bytes()  # read once: loaded and fingerprinted
        gen.weights_sha256 = hashlib.sha256(weights).hexdigest()
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        gen.encoder.load_state_dict(state["encoder"])
        gen.decoder.load_state_dict(state["decoder"])
        return gen.to(device)
