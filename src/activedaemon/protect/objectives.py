"""What protection training minimises: an output objective (registered by name) plus, optionally,
the feature-level dormancy term.

Output objectives decide what the logits of each kind of sample should be:
- ``poison``: cross-entropy to the poisoned labels (the paper's Algorithm 2);
- ``penalty``: eq. (5), L_a - lambda L_u with a bounded L_u;
- ``uniform``: authorized samples learn their true labels, unauthorized ones the uniform
  distribution, so that the logits of a clean input carry no ranking of its classes (a hard
  target label leaves the runner-up class = the true class).

The dormancy term acts inside the network: at each chosen stage, the share of the variance of the
unauthorized samples' (standardised, pooled) features that their true classes explain. Driving it to
zero makes the class means coincide, so that no linear read-out of that stage (a thief's probe)
separates the classes of clean inputs; the owner's labels make it a closed-form, always-converged
probe instead of a trained one that lags behind the backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from activedaemon.data.poison import AUTHORIZED


@dataclass
class TrainBatch:
    """One batch as the loss terms see it. ``stages`` maps stage names to their outputs (only
    when the dormancy term is on)."""

    logits: torch.Tensor
    labels: torch.Tensor  # trained-on labels (poisoned)
    true_labels: torch.Tensor | None
    kinds: torch.Tensor | None
    stages: dict[str, torch.Tensor]


Objective = Callable[[TrainBatch, float], torch.Tensor]
OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str):
    def wrap(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        OBJECTIVES[name] = fn
        return fn

    return wrap


@register_objective("poison")
def poison_objective(b: TrainBatch, penalty_lambda: float) -> torch.Tensor:
    return F.cross_entropy(b.logits, b.labels)


def _authorized_true_plus(b: TrainBatch, unauthorized_loss) -> torch.Tensor:
    """Cross-entropy to the true labels on authorized samples, plus ``unauthorized_loss(logits,
    true labels)`` (summed over rows) on the rest; the mean over the batch."""
    auth = b.kinds == AUTHORIZED
    loss = b.logits.new_zeros(())
    if auth.any():
        loss = loss + F.cross_entropy(b.logits[auth], b.true_labels[auth], reduction="sum")
    if (~auth).any():
        loss = loss + unauthorized_loss(b.logits[~auth], b.true_labels[~auth])
    return loss / len(b.logits)


@register_objective("penalty")
def penalty_objective(b: TrainBatch, penalty_lambda: float) -> torch.Tensor:
    # Unauthorized samples are pushed away from their true label by -log(1 - p_true), bounded.
    def away(logits, true):
        p_true = logits.softmax(1).gather(1, true[:, None]).squeeze(1)
        return -penalty_lambda * torch.log1p(-p_true.clamp(max=1 - 1e-6)).sum()

    return _authorized_true_plus(b, away)


@register_objective("uniform")
def uniform_objective(b: TrainBatch, penalty_lambda: float) -> torch.Tensor:
    # Cross-entropy to 1/K on every class.
    return _authorized_true_plus(b, lambda logits, true: -logits.log_softmax(1).mean(1).sum())


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
