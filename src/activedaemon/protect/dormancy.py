"""The dormancy piece: a feature-level term that keeps a stolen model dormant inside.

At each chosen stage, the share of the variance of the unauthorized samples' (standardised,
pooled) features that their true classes explain. Driving it to zero makes the class means
coincide, so that no linear read-out of that stage (a thief's probe) separates the classes of
clean inputs; the owner's labels make it a closed-form, always-converged probe instead of a
trained one that lags behind the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from activedaemon.protect.models import StageTap, stage_names
from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.pieces import PIECES, PieceEnv, TrainingPiece
from activedaemon.protect.poison import AUTHORIZED


@dataclass
class DormancyConfig:
    weight: float = 0.0  # lambda_d, the feature term's weight; 0 = off
    stages: list[str] | None = None  # stage names (protect.models.stage_names); None = all
    pool: int = 1  # each channel average-pooled to pool x pool before the measure
    measure: str = "eta2"  # eta2 (per-feature class means) or probe (cross-fitted ridge probe)
    ridge: float = 1.0  # the probe's ridge, relative to the number of samples it is fitted on

    def validate(self) -> None:
        if self.weight < 0 or self.pool < 1 or self.ridge <= 0:
            raise ValueError("dormancy.weight >= 0, pool >= 1 and ridge > 0 are required")
        if self.measure not in MEASURES:
            raise ValueError(f"dormancy.measure must be one of {sorted(MEASURES)}")


def class_variance_share(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """eta^2 averaged over features: the share of each standardised feature's variance over the
    batch that the class means explain (0: equal class means; 1: features name the class)."""
    z = _standardise(features)
    onehot = F.one_hot(labels, k).to(z.dtype)
    sums = onehot.T @ z  # (K, D): per-class sums
    between = (sums.pow(2).sum(1) / onehot.sum(0).clamp(min=1)).sum()  # sum_k n_k |m_k|^2
    return between / z.numel()


def _standardise(features: torch.Tensor) -> torch.Tensor:
    z = features.flatten(1).float()
    return (z - z.mean(0)) / (z.std(0, unbiased=False) + 1e-5)


def cross_fitted_probe_r2(
    features: torch.Tensor, labels: torch.Tensor, k: int, ridge: float = 1.0
) -> torch.Tensor:
    """How well a linear probe reads the class from ``features``, measured out of sample: a ridge
    regression to the one-hot labels, fitted in closed form on one half of the batch and scored
    (R^2, clipped at 0) on the other, both ways, averaged. Unlike eta^2 it sees combinations of
    features, as a thief's probe does, and it does not reward noise: features that carry no
    class information score 0."""
    z = _standardise(features)
    y = F.one_hot(labels, k).to(z.dtype)
    y = y - y.mean(0)
    halves = (torch.arange(len(z), device=z.device) % 2).bool()
    scores = []
    for fit_rows in (halves, ~halves):
        za, ya, zb, yb = z[fit_rows], y[fit_rows], z[~fit_rows], y[~fit_rows]
        # Dual form: (N_a x N_a) solve, cheap whatever the feature width.
        gram = za @ za.T + ridge * len(za) * torch.eye(len(za), device=z.device, dtype=z.dtype)
        pred = zb @ (za.T @ torch.linalg.solve(gram, ya))
        r2 = 1 - (yb - pred).pow(2).sum() / yb.pow(2).sum().clamp(min=1e-8)
        scores.append(r2.clamp(min=0))
    return torch.stack(scores).mean()


MEASURES = {
    "eta2": lambda f, y, k, cfg: class_variance_share(f, y, k),
    "probe": lambda f, y, k, cfg: cross_fitted_probe_r2(f, y, k, cfg.ridge),
}


def dormancy_term(cfg: DormancyConfig, b: TrainBatch, num_classes: int) -> torch.Tensor:
    """The mean of the chosen measure over the chosen stages, on the batch's unauthorized
    samples (clean, noise and moved-token) with their true labels."""
    rows = b.kinds != AUTHORIZED
    if rows.sum() < 2 * num_classes or not b.stages:
        return b.logits.new_zeros(())
    labels = b.true_labels[rows]
    shares = []
    for out in b.stages.values():
        pooled = F.adaptive_avg_pool2d(out[rows], cfg.pool)
        shares.append(MEASURES[cfg.measure](pooled, labels, num_classes, cfg))
    return torch.stack(shares).mean()


@PIECES.register("dormancy")
class DormancyPiece(TrainingPiece):
    Config = DormancyConfig

    @staticmethod
    def enabled(cfg: DormancyConfig) -> bool:
        return cfg.weight > 0

    def __init__(self, cfg: DormancyConfig, env: PieceEnv) -> None:
        super().__init__(cfg, env)
        known = stage_names(env.model)
        unknown = set(cfg.stages or []) - set(known)
        if unknown:
            raise ValueError(f"dormancy.stages {sorted(unknown)} unknown; stages: {known}")
        self.tap = StageTap(env.model, cfg.stages or known)
        self.total, self.rows = 0.0, 0

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        batch.stages = self.tap.outputs
        term = dormancy_term(self.cfg, batch, self.env.num_classes)
        self.total += term.item() * len(batch.labels)
        self.rows += len(batch.labels)
        return self.cfg.weight * term

    def epoch_summary(self) -> dict[str, float]:
        row = {"train_dormancy_term": round(self.total / max(self.rows, 1), 4)}
        self.total, self.rows = 0.0, 0
        return row

    def close(self) -> None:
        self.tap.close()
