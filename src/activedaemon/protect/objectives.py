"""Output objectives of protection training (registered by name) and the batch that every loss
term sees.

Output objectives decide what the logits of each kind of sample should be:
- ``poison``: cross-entropy to the poisoned labels (the paper's Algorithm 2);
- ``penalty``: eq. (5), L_a - lambda L_u with a bounded L_u;
- ``uniform``: authorized samples learn their true labels, unauthorized ones the uniform
  distribution, so that the logits of a clean input carry no ranking of its classes (a hard
  target label leaves the runner-up class = the true class).

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from activedaemon.protect.poison import AUTHORIZED
from activedaemon.registries import Registry


@dataclass
class TrainBatch:
    """One batch as the loss terms see it: ``logits`` is None until the forward pass;
    ``stages`` maps stage names to their outputs (only for pieces that tap them)."""

    logits: torch.Tensor | None
    labels: torch.Tensor  # trained-on labels (poisoned)
    true_labels: torch.Tensor | None = None
    kinds: torch.Tensor | None = None
    stages: dict[str, torch.Tensor] = field(default_factory=dict)


Objective = Callable[[TrainBatch, float], torch.Tensor]
OBJECTIVES: Registry[Objective] = Registry("objective", ("activedaemon.protect.registered",))


def information_maximisation(logits: torch.Tensor) -> torch.Tensor:
    """SHOT's loss (Liang et al., ICML 2020), what a thief with no labels minimises: mean entropy
    of the predictions (low: confident) minus the entropy of their mean (high: diverse over the
    batch)."""
    p = logits.float().softmax(1)
    per_image = -(p * p.clamp(min=1e-8).log()).sum(1).mean()
    mean = p.mean(0)
    return per_image + (mean * mean.clamp(min=1e-8).log()).sum()


@OBJECTIVES.register("poison")
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


@OBJECTIVES.register("penalty")
def penalty_objective(b: TrainBatch, penalty_lambda: float) -> torch.Tensor:
    # Unauthorized samples are pushed away from their true label by -log(1 - p_true), bounded.
    def away(logits, true):
        p_true = logits.softmax(1).gather(1, true[:, None]).squeeze(1)
        return -penalty_lambda * torch.log1p(-p_true.clamp(max=1 - 1e-6)).sum()

    return _authorized_true_plus(b, away)


@OBJECTIVES.register("uniform")
def uniform_objective(b: TrainBatch, penalty_lambda: float) -> torch.Tensor:
    # Cross-entropy to 1/K on every class.
    return _authorized_true_plus(b, lambda logits, true: -logits.log_softmax(1).mean(1).sum())
