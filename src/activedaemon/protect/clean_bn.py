"""The clean-statistics piece: every BatchNorm normalizes a training batch with the statistics of
its clean rows only, and keeps running statistics of clean images only.

A thief who holds the weights can re-estimate BatchNorm's running statistics on clean images of
its own, with no labels and no search (the dormancy audit's "BatchNorm re-estimated" thief).
Trained the ordinary way, a protected model normalizes with statistics of mixed batches
(authorized and unauthorized rows), and its dormancy leans on them: re-estimated on clean images
alone, the demo's model answers about half of them correctly. With this piece the model is
trained under the very statistics such a thief would compute, so re-estimating them changes
(almost) nothing. The modules stay ``nn.BatchNorm2d`` in the saved weights; only their training
forward pass differs while the piece is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.pieces import PIECES, PieceEnv, TrainingPiece
from activedaemon.protect.poison import CLEAN


@dataclass
class CleanBNConfig:
    enabled: bool = False


class CleanReferencedBatchNorm(nn.BatchNorm2d):
    """In training mode: the mean and variance of the rows ``reference`` (a bool mask set before
    each forward pass) normalize the whole batch, and only they move the running statistics.
    Elsewhere (eval mode, no mask): plain BatchNorm."""

    reference: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.reference
        if not self.training or rows is None or not rows.any():
            return super().forward(x)
        ref = x[rows]
        var, mean = torch.var_mean(ref, (0, 2, 3), unbiased=False)
        with torch.no_grad():  # as nn.BatchNorm2d does: the unbiased variance is the one kept
            n = ref.numel() / ref.shape[1]
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
            self.num_batches_tracked += 1
        # one pass over the batch: x * scale + shift per channel (gradients reach mean and var)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


@PIECES.register("clean_bn")
class CleanBNPiece(TrainingPiece):
    Config = CleanBNConfig

    @staticmethod
    def enabled(cfg: CleanBNConfig) -> bool:
        return cfg.enabled

    def __init__(self, cfg: CleanBNConfig, env: PieceEnv) -> None:
        super().__init__(cfg, env)
        self.layers = [m for m in env.model.modules() if type(m) is nn.BatchNorm2d]
        if not self.layers:
            raise ValueError("clean_bn needs a classifier with BatchNorm2d layers")
        if any(m.momentum is None or not m.track_running_stats for m in self.layers):
            raise ValueError("clean_bn needs BatchNorm2d layers with a momentum and running stats")
        for m in self.layers:
            m.__class__ = CleanReferencedBatchNorm  # same parameters and buffers, new forward

    def perturb(self, x: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        clean = batch.kinds == CLEAN
        for m in self.layers:
            m.reference = clean
        return x

    def close(self) -> None:
        for m in self.layers:
            m.__dict__.pop("reference", None)
            m.__class__ = nn.BatchNorm2d
