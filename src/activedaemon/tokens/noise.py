"""The noise layer between encoder and decoder, so that tokens survive storage and transit.

Its own module (as in VideoSeal) so that training and evaluation can swap or disable it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from activedaemon.imageio import jpeg_round_trip, round_8bit


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8 bits, with a straight-through gradient."""
    clamped = images.clamp(0.0, 1.0)
    return clamped + (round_8bit(clamped) - clamped).detach()


def jpeg_straight_through(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG compression (Pillow) in the forward pass, identity gradient backward."""
    return images + (jpeg_round_trip(images, quality) - images).detach()


@dataclass(frozen=True)
class NoiseConfig:
    gaussian_sigma: float = 0.02  # sigma drawn uniformly in [0, this] per image
    brightness: float = 0.03  # additive shift in [-b, b]
    contrast: float = 0.05  # factor in [1 - c, 1 + c] around the image mean
    shift_px: int = 1  # translation by up to this many pixels (replicate padding)
    p_shift: float = 0.25
    # Train through real JPEG (slower): one quality, or [low, high] drawn per batch; None = off.
    jpeg_quality: int | list[int] | None = None
    p_jpeg: float = 0.5

    def __post_init__(self) -> None:
        if self.jpeg_quality is None:
            return
        low, high = self.jpeg_range()
        if not 1 <= low <= high <= 100:
            raise ValueError(
                f"noise.jpeg_quality is a quality or [low, high] in 1..100, got {self.jpeg_quality}"
            )

    def jpeg_range(self) -> tuple[int, int]:
        q = self.jpeg_quality
        return (q, q) if isinstance(q, int) else tuple(q)

    def to_dict(self) -> dict:
        return asdict(self)


class NoiseLayer(nn.Module):
    """Random distortions of the authorized image x_a during training; always ends 8-bit."""

    def __init__(self, cfg: NoiseConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or NoiseConfig()

    def forward(self, images: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        cfg, n = self.cfg, images.shape[0]
        x = quantize_8bit(images)
        if strength <= 0:
            return x

        def per_image(scale: float) -> torch.Tensor:
            return (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * scale * strength

        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + per_image(cfg.contrast)) + mean + per_image(cfg.brightness)
        sigma = torch.rand(n, 1, 1, 1, device=x.device) * cfg.gaussian_sigma * strength
        x = x + torch.randn_like(x) * sigma
        if cfg.shift_px and torch.rand(()) < cfg.p_shift:
            x = _random_shift(x, cfg.shift_px)
        if cfg.jpeg_quality and torch.rand(()) < cfg.p_jpeg:
            low, high = cfg.jpeg_range()
            x = jpeg_straight_through(x, int(torch.randint(low, high + 1, ())))
        return quantize_8bit(x)


def _random_shift(x: torch.Tensor, max_px: int) -> torch.Tensor:
    dy, dx = (int(v) for v in torch.randint(-max_px, max_px + 1, (2,)))
    p = max_px
    padded = nn.functional.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., p + dy : p + dy + h, p + dx : p + dx + w]
