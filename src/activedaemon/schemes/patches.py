"""M-LOCK and ADIP: a fixed visible pattern marks authorized samples, trained with the same
poisoning and label strategies as ActiveDaemon (Algorithm 2 with the pattern as the token maker).

Both patterns are the same for every user (no user-specific token) and visible (PSNR far below
an invisible token's). The poisoned set has no "mismatched" part for them: moving a fixed patch
from one image to another gives the authorized image itself, so those samples would teach the
opposite label for the same input.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import torch

from activedaemon.protect import train_classifier
from activedaemon.protect.checkpoint import load_classifier
from activedaemon.schemes.base import Scheme, register_scheme


class PatchMaker:
    """A TokenMaker (see protect.poison) that pastes ``alpha`` * pattern + (1 - alpha) * image where
    ``mask`` is set. ``random_place`` shifts the pattern to a place drawn per image (seeded by
    the image's content, so the same image always gets the same place)."""

    def __init__(
        self, pattern: torch.Tensor, mask: torch.Tensor, alpha: float, random_place: bool = False
    ) -> None:
        self.pattern, self.mask, self.alpha, self.random_place = pattern, mask, alpha, random_place
        h = hashlib.sha256(pattern.numpy().tobytes() + mask.numpy().tobytes())
        h.update(f"{alpha}-{random_place}".encode())
        self.cache_key = "patch-" + h.hexdigest()[:16]

    def __call__(self, images: torch.Tensor, user_ids=None) -> torch.Tensor:
        n, c, h, w = images.shape
        mask = self.mask.to(images.dtype).expand(n, 1, h, w)
        if self.random_place:
            ys, xs = self.mask.nonzero(as_tuple=True)[-2:]
            ph, pw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
            seeds = (images.flatten(1) * 255).round().long().sum(1)
            y0, x0 = int(ys.min()), int(xs.min())
            shifts = [
                (int(s % (h - ph + 1)) - y0, int((s // h) % (w - pw + 1)) - x0)
                for s in seeds.tolist()
            ]
            mask = torch.stack([self.mask[0].roll(sh, dims=(-2, -1)) for sh in shifts]).to(images)
        pattern = self.pattern.to(images).expand(n, c, h, w)
        out = images + self.alpha * mask * (pattern - images)
        return (out * 255).round().clamp(0, 255) / 255  # 8-bit, as stored and sent


class PatchScheme(Scheme):
    """Train on the poisoned set with ``self.maker`` as the token maker."""

    maker: PatchMaker

    def train(self, cfg, out, clean_run=None, progress=False) -> Path:
        poison = replace(cfg.poison, kinds={**cfg.poison.kinds, "mismatched": 0.0})
        run = train_classifier(
            replace(cfg, protected=True, poison=poison), out, progress, token_maker=self.maker
        )
        self.load(run)
        return run

    def load(self, run) -> PatchScheme:
        self.model = load_classifier(run)
        return self

    def authorize(self, images: torch.Tensor, user_ids=None) -> torch.Tensor:
        return self.maker(images, user_ids)


@register_scheme("mlock")
class MLock(PatchScheme):
    """M-LOCK (Ren et al., TDSC 2022): a solid ``size`` x ``size`` pixel square of ``colour`` (RGB
    in [0, 1]), one pixel in from the bottom-right corner, or at a place drawn per image with
    ``random_place``. ``size`` is in pixels at any image size (not scaled); ``image_size`` and
    ``channels`` must match the images the patch goes on."""

    def __init__(
        self,
        size: int = 4,
        colour: tuple[float, float, float] = (1.0, 0.0, 0.0),
        random_place: bool = False,
        image_size: int = 32,
        channels: int = 3,
    ) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, image_size, image_size)
        mask[..., -size - 1 : -1, -size - 1 : -1] = 1  # bottom-right, one pixel in
        pattern = torch.tensor(colour[:channels]).view(1, channels, 1, 1)
        self.maker = PatchMaker(pattern, mask, 1.0, random_place)


@register_scheme("adip")
class Adip(PatchScheme):
    """ADIP (Xue et al., TrustCom 2020): a 3x3 grid of white squares (``square`` px each, evenly
    spread over the image) blended with weight ``alpha``: the same fingerprint for all users."""

    def __init__(
        self, square: int = 3, alpha: float = 0.6, image_size: int = 32, channels: int = 3
    ) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, image_size, image_size)
        for cy in (1, 2, 3):
            for cx in (1, 2, 3):
                y, x = cy * image_size // 4 - square // 2, cx * image_size // 4 - square // 2
                mask[..., y : y + square, x : x + square] = 1
        self.maker = PatchMaker(torch.ones(1, channels, 1, 1), mask, alpha)
