"""Per-query adversarial negatives and noise on the unauthorized path: defences against a thief
who searches, image by image, for a small change that wakes the stolen model.

``wakeup``: before each forward pass, a fraction of the batch's unauthorized samples is moved by
a few normalised gradient steps inside an L2 ball of r x the real tokens' median L2 size, in the
direction that most raises the training objective on them (the worst neighbour, as in
adversarial training, Madry et al., ICLR 2018); the moved samples keep their unauthorized
target. The model so learns to stay dormant on the whole ball around a clean input, except along
the tokens it is trained to read. The search does not know any particular thief's objective: it
attacks whatever the objective asks of unauthorized samples.

``smoothing``: Gaussian noise added to a fraction of the unauthorized samples (the
randomized-smoothing step of Authority Backdoor, AAAI 2026), which keep their target: a model
dormant under noise of standard deviation sigma is dormant around clean inputs in a radius that
grows with sigma (Cohen et al., ICML 2019).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from activedaemon.protect.adversarial import project_l2
from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.pieces import PIECES, PieceEnv, TrainingPiece
from activedaemon.protect.poison import AUTHORIZED


@dataclass
class WakeupConfig:
    fraction: float = 0.0  # of each batch's unauthorized samples moved to their worst neighbour
    steps: int = 3  # gradient steps of the in-loop search
    budget_scale: float = 1.0  # r: the ball's L2 radius, x the real tokens' median L2 size

    def validate(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"wakeup.fraction must be in [0, 1], got {self.fraction}")
        if self.steps < 1 or self.budget_scale <= 0:
            raise ValueError("wakeup.steps >= 1 and wakeup.budget_scale > 0 are required")


@dataclass
class SmoothingConfig:
    fraction: float = 0.0  # of each batch's unauthorized samples that get Gaussian noise
    sigma: float = 0.1  # its standard deviation (images in [0, 1])

    def validate(self) -> None:
        if not 0 <= self.fraction <= 1 or self.sigma <= 0:
            raise ValueError("smoothing.fraction in [0, 1] and smoothing.sigma > 0 are required")


def _chosen(batch: TrainBatch, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A random ``fraction`` of the batch's unauthorized rows (indices)."""
    rows = (batch.kinds != AUTHORIZED).nonzero().squeeze(1)
    keep = torch.randperm(len(rows), generator=gen)[: int(round(fraction * len(rows)))]
    return rows[keep.to(rows.device)]


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module):
    """BatchNorm layers normalise by the batch as in training but leave their running
    statistics alone (momentum 0): the search's passes do not count as training data."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum


def worst_neighbours(
    model: nn.Module,
    x: torch.Tensor,
    batch: TrainBatch,
    loss_fn,
    radius: float,
    steps: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """``x`` (the rows of ``batch``) moved inside an L2 ball of ``radius`` to raise
    ``loss_fn(batch with logits)``: a random start in the ball, then normalised gradient steps
    of 2.5 x radius / steps, projected back onto the ball."""
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    delta = project_l2(noise * 1e3, radius * torch.rand((), generator=gen).item())
    use_amp = x.device.type == "cuda"
    with frozen_batchnorm_statistics(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.autocast(x.device.type, enabled=use_amp):
                logits = model((x + delta).clamp(0, 1))
            view = TrainBatch(logits.float(), batch.labels, batch.true_labels, batch.kinds)
            (g,) = torch.autograd.grad(loss_fn(view), delta)
            norms = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (x.ndim - 1))
            delta = project_l2(delta.detach() + 2.5 * radius / steps * g / norms, radius)
    return (x + delta).clamp(0, 1).detach()


def _rows(batch: TrainBatch, rows: torch.Tensor) -> TrainBatch:
    return TrainBatch(None, batch.labels[rows], batch.true_labels[rows], batch.kinds[rows])


@PIECES.register("wakeup")
class WakeupPiece(TrainingPiece):
    Config = WakeupConfig

    @staticmethod
    def enabled(cfg: WakeupConfig) -> bool:
        return cfg.fraction > 0

    def __init__(self, cfg: WakeupConfig, env: PieceEnv) -> None:
        super().__init__(cfg, env)
        if env.objective is None:
            raise ValueError("the wakeup piece needs the training objective (PieceEnv.objective)")
        self.radius = cfg.budget_scale * env.info["token_budget"]["l2"]
        self.gen = torch.Generator().manual_seed(env.seed + 7919 * (env.rank + 1))

    def perturb(self, x: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        rows = _chosen(batch, self.cfg.fraction, self.gen)
        if len(rows) < 2:  # BatchNorm needs two samples
            return x
        view = _rows(batch, rows)
        x = x.clone()
        x[rows] = worst_neighbours(
            self.env.model,
            x[rows],
            view,
            lambda b: self.env.objective(b, self.env.penalty_lambda),
            self.radius,
            self.cfg.steps,
            self.gen,
        )
        return x


@PIECES.register("smoothing")
class SmoothingPiece(TrainingPiece):
    Config = SmoothingConfig

    @staticmethod
    def enabled(cfg: SmoothingConfig) -> bool:
        return cfg.fraction > 0

    def __init__(self, cfg: SmoothingConfig, env: PieceEnv) -> None:
        super().__init__(cfg, env)
        self.gen = torch.Generator().manual_seed(env.seed + 104729 * (env.rank + 1))

    def perturb(self, x: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        rows = _chosen(batch, self.cfg.fraction, self.gen)
        x = x.clone()
        noise = torch.randn(x[rows].shape, generator=self.gen).to(x.device)
        x[rows] = (x[rows] + self.cfg.sigma * noise).clamp(0, 1)
        return x
