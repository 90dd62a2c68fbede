"""Adversarial negatives: the defence against reverse-engineered (universal) wake-up keys.

During protection training a small pool of universal perturbations, each inside the real tokens'
L-inf and L2 size, is trained *as the attacker would*, and is added to some unauthorized samples
of every batch, which keep their changed labels. The attacker's objective is the thief's:
``labels`` (cross-entropy to the true labels, as the ``reverse`` attack does) or ``im``
(information maximisation, the label-free universal key of the ``wake`` attack: confident per
image and diverse over the batch, no labels at all). The model so learns that a perturbation of a
token's size that is not a real token does not wake it (universal adversarial training, Shafahi et
al., AAAI 2020, turned around: here the adversary wants the *right* answer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from activedaemon.protect.objectives import TrainBatch, information_maximisation
from activedaemon.protect.pieces import PIECES, PieceEnv, TrainingPiece
from activedaemon.protect.poison import AUTHORIZED, CLEAN

# What the pool's attacker lowers, from the perturbed rows' logits and their true labels.
ATTACKER_LOSSES = {
    "labels": lambda logits, true_labels: F.cross_entropy(logits.float(), true_labels),
    "im": lambda logits, true_labels: information_maximisation(logits),
}


@dataclass
class AdversarialConfig:
    fraction: float = (
        0.0  # of each batch's unauthorized samples that get a pool perturbation; 0 = off
    )
    pool: int = 8  # universal perturbations trained side by side
    step: float = 0.05  # each update moves a perturbation by step * (its L-inf budget) per pixel
    budget_scale: float = 1.5  # budget relative to the median real token (margin over the attack)
    objective: str = "labels"  # the pool's attacker: "labels" (true labels) or "im" (none)
    # Every refresh_every batches (0: never) the oldest member is replaced by a key searched from
    # a fresh random start for refresh_steps Adam steps on the current model, as a thief searches
    # after training: the one-step-per-batch pool alone chases keys the model has seen.
    refresh_every: int = 0
    refresh_steps: int = 40

    def validate(self) -> None:
        if self.refresh_every < 0 or self.refresh_steps < 1:
            raise ValueError("adversarial.refresh_every >= 0 and refresh_steps >= 1 are required")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"adversarial.fraction must be in [0, 1], got {self.fraction}")
        if self.pool < 1 or self.step <= 0 or self.budget_scale <= 0:
            raise ValueError("adversarial.pool >= 1, step > 0 and budget_scale > 0 are required")
        if self.objective not in ATTACKER_LOSSES:
            raise ValueError(
                f"adversarial.objective must be one of {sorted(ATTACKER_LOSSES)}, "
                f"got {self.objective!r}"
            )


def token_sizes(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's L-inf and L2 size (tokens: N, C, H, W)."""
    flat = tokens.flatten(1)
    return flat.abs().amax(1), flat.norm(dim=1)


def token_budget(tokens: torch.Tensor) -> tuple[float, float]:
    """Median L-inf and L2 size of a batch of tokens (N, C, H, W)."""
    linf, l2 = token_sizes(tokens)
    return linf.median().item(), l2.median().item()


def project_l2(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Each perturbation (first dim) scaled into the L2 ball of ``radius``."""
    norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (delta.ndim - 1))
    return delta * (radius / norms).clamp(max=1.0)


def project(delta: torch.Tensor, linf: float, l2: float) -> torch.Tensor:
    """Into the L-inf ball, then the L2 ball (per perturbation: first dim is the pool)."""
    return project_l2(delta.clamp(-linf, linf), l2)


def search_key(
    start: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    linf: float,
    l2: float,
    steps: int,
    lr: float | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """A thief's key search: one perturbation from ``start``, ``steps`` Adam steps (at ``lr``,
    by default a tenth of the L-inf budget) on ``loss_of(perturbation)`` (the caller picks images
    and objective), projected into (linf, l2) after every step. Only the perturbation gets a
    gradient, never the weights. ``progress`` names a progress bar (none when None)."""
    delta = project(start, linf, l2).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=linf / 10 if lr is None else lr)
    for _ in tqdm(range(steps), desc=progress, disable=progress is None):
        (delta.grad,) = torch.autograd.grad(loss_of(delta), delta)
        opt.step()
        with torch.no_grad():
            delta.copy_(project(delta, linf, l2))
    return delta.detach()


class UniversalNegatives:
    """The pool of universal perturbations and their attacker-side updates."""

    def __init__(
        self,
        cfg: AdversarialConfig,
        shape: tuple[int, ...],
        linf: float,
        l2: float,
        seed: int,
        device: torch.device,
    ):
        self.cfg = cfg
        self.linf, self.l2 = cfg.budget_scale * linf, cfg.budget_scale * l2
        self.gen = torch.Generator().manual_seed(seed)
        start = (torch.rand((cfg.pool, *shape), generator=self.gen) * 2 - 1) * self.linf
        self.pool = project(start, self.linf, self.l2).to(device)
        self.oldest = 0  # the member a refresh replaces next

    def refresh(self, model: torch.nn.Module, x: torch.Tensor, true_labels: torch.Tensor) -> None:
        """Replace the oldest member by a key searched from a fresh random start on ``model`` in
        eval mode (as a thief runs it) over the clean images ``x`` (the ``wake`` attack's
        label-free key search)."""
        was_training = model.training
        model.eval()
        start = (torch.rand((1, *x.shape[1:]), generator=self.gen) * 2 - 1) * self.linf
        loss = ATTACKER_LOSSES[self.cfg.objective]
        key = search_key(
            start.to(x.device),
            lambda delta: loss(model((x + delta).clamp(0, 1)), true_labels),
            linf=self.linf,
            l2=self.l2,
            steps=self.cfg.refresh_steps,
        )
        model.train(was_training)
        self.pool[self.oldest] = key[0]
        self.oldest = (self.oldest + 1) % self.cfg.pool

    def perturb(self, x: torch.Tensor, unauthorized: torch.Tensor):
        """Add one pool member to a ``fraction`` of the unauthorized rows of the batch ``x``.
        Returns (new x, selected rows, pool index, the perturbation leaf that needs a gradient),
        or (x, None, None, None) when nothing is selected."""
        rows = unauthorized.nonzero().squeeze(1)
        rows = rows[: int(round(self.cfg.fraction * len(rows)))]
        if len(rows) == 0:
            return x, None, None, None
        j = int(torch.randint(self.cfg.pool, (1,), generator=self.gen))
        delta = self.pool[j].clone().requires_grad_(True)
        x = x.clone()
        x[rows] = (x[rows] + delta).clamp(0, 1)
        return x, rows, j, delta

    def update(self, j: int, delta: torch.Tensor, logits_rows, true_labels_rows) -> None:
        """One attacker step on pool member j: lower the attacker's loss on the rows."""
        loss = ATTACKER_LOSSES[self.cfg.objective](logits_rows, true_labels_rows)
        (grad,) = torch.autograd.grad(loss, delta, retain_graph=True)
        with torch.no_grad():
            moved = self.pool[j] - self.cfg.step * self.linf * grad.sign()
            self.pool[j] = project(moved[None], self.linf, self.l2)[0]


@PIECES.register("adversarial")
class AdversarialPiece(TrainingPiece):
    """Adds pool perturbations to unauthorized rows before the forward pass and takes one
    attacker step on the used member after it (``loss`` returns None: the rows keep their
    changed labels in the objective)."""

    Config = AdversarialConfig

    @staticmethod
    def enabled(cfg: AdversarialConfig) -> bool:
        return cfg.fraction > 0

    def __init__(self, cfg: AdversarialConfig, env: PieceEnv) -> None:
        super().__init__(cfg, env)
        budget = env.info["token_budget"]
        self.negatives = UniversalNegatives(
            cfg,
            env.info["image_shape"],
            linf=budget["linf"],
            l2=budget["l2"],
            seed=env.seed + env.rank,
            device=env.device,
        )
        self.step: tuple | None = None
        self.batches = 0

    def perturb(self, x: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        self.batches += 1
        clean = batch.kinds == CLEAN
        if self.cfg.refresh_every and self.batches % self.cfg.refresh_every == 0 and clean.any():
            self.negatives.refresh(self.env.model, x[clean], batch.true_labels[clean])
        x, rows, j, delta = self.negatives.perturb(x, batch.kinds != AUTHORIZED)
        self.step = None if rows is None else (rows, j, delta)
        return x

    def loss(self, batch: TrainBatch) -> None:
        if self.step is not None:
            rows, j, delta = self.step
            self.negatives.update(j, delta, batch.logits[rows], batch.true_labels[rows])
        return None
