"""The transit piece: training images pass through what honest transport does to them.

A fraction of every batch's rows, authorized and unauthorized alike, goes through a real JPEG
encode / decode (quality drawn in ``jpeg_quality``) or small Gaussian noise, and keeps its label.
An authorized image that crossed the channel must still wake the model; a clean image that
crossed it must not (so the channel's artefacts are no key); the noise negatives of the token's
size stay negatives. Without it, sigma 0.01 noise or JPEG 95 on an authorized image put the demo's
model back to sleep although the decoder still reads the id (the `transit` attack).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from activedaemon.imageio import jpeg_round_trip, round_8bit
from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.pieces import PIECES, PieceEnv, TrainingPiece


@dataclass
class TransitConfig:
    fraction: float = 0.0  # of each batch's rows that cross the channel; 0 = off
    jpeg_quality: list[int] = field(default_factory=lambda: [75, 95])  # drawn per batch
    p_jpeg: float = 0.5  # else Gaussian noise
    sigma: float = 0.015  # noise sigma drawn per image in [0, sigma]

    def validate(self) -> None:
        low, high = self.jpeg_quality
        if not 0 <= self.fraction <= 1 or not 0 <= self.p_jpeg <= 1:
            raise ValueError("transit.fraction and transit.p_jpeg must be in [0, 1]")
        if not 1 <= low <= high <= 100 or self.sigma < 0:
            raise ValueError("transit.jpeg_quality is [low, high] in 1..100; sigma >= 0")


@PIECES.register("transit")
class TransitPiece(TrainingPiece):
    Config = TransitConfig

    @staticmethod
    def enabled(cfg: TransitConfig) -> bool:
        return cfg.fraction > 0

    def __init__(self, cfg: TransitConfig, env: PieceEnv) -> None:
        super().__init__(cfg, env)
        self.gen = torch.Generator().manual_seed(env.seed + 1000 * env.rank + 17)

    def perturb(self, x: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        n = len(x)
        rows = torch.randperm(n, generator=self.gen)[: int(round(self.cfg.fraction * n))]
        if len(rows) == 0:
            return x
        x = x.clone()
        jpeg = torch.rand(len(rows), generator=self.gen) < self.cfg.p_jpeg
        if jpeg.any():
            low, high = self.cfg.jpeg_quality
            quality = int(torch.randint(low, high + 1, (1,), generator=self.gen))
            x[rows[jpeg]] = jpeg_round_trip(x[rows[jpeg]], quality)
        noisy = rows[~jpeg]
        if len(noisy):
            sigma = torch.rand(len(noisy), 1, 1, 1, generator=self.gen) * self.cfg.sigma
            noise = torch.randn(x[noisy].shape, generator=self.gen) * sigma
            x[noisy] = round_8bit(x[noisy] + noise.to(x.device))
        return x
