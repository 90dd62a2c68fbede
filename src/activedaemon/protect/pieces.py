"""Training pieces: the parts of protection training beyond the output objective, each in its own
file with its config (``adversarial``: universal negatives; ``dormancy``: the feature term).

A piece is a class registered with ``@PIECES.register(name)`` whose ``Config`` dataclass is
read from the protection config's key of the same name (``dormancy: {weight: 1}`` in a preset,
``--set dormancy.weight=1``). A piece whose config says it is off (``enabled`` False) is not
built. During training the loop calls, for every batch: ``perturb`` (may change the inputs
before the forward pass), ``loss`` (an extra, already weighted term, or None) after it; and
``epoch_summary`` once an epoch for the history. A new defence is one file: its Config, its
piece, and the ``register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from activedaemon.protect.objectives import TrainBatch
from activedaemon.registries import Registry


@dataclass
class PieceEnv:
    """What a piece may use: the model (before any DDP wrapper), its device, the number of
    classes, the run's seed and rank, the poisoned set's statistics (``info``: token size,
    kind counts) and the output objective."""

    model: nn.Module
    device: torch.device
    num_classes: int
    seed: int
    rank: int
    info: dict[str, Any] = field(default_factory=dict)
    # The run's output objective and its lambda, for pieces that search against it (wakeup).
    objective: Any = None
    penalty_lambda: float = 1.0


class TrainingPiece:
    Config: ClassVar[type]

    def __init__(self, cfg: Any, env: PieceEnv) -> None:
        self.cfg, self.env = cfg, env

    @staticmethod
    def enabled(cfg: Any) -> bool:
        return True

    def perturb(self, x: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        """The inputs the model sees (default: unchanged). ``batch.logits`` is not set yet."""
        return x

    def loss(self, batch: TrainBatch) -> torch.Tensor | None:
        """An extra loss term, already weighted, or None."""
        return None

    def epoch_summary(self) -> dict[str, float]:
        """Figures for the epoch's history row (the piece resets its sums)."""
        return {}

    def close(self) -> None:
        pass


PIECES: Registry[type[TrainingPiece]] = Registry(
    "training piece", ("activedaemon.protect.registered",)
)


def piece_config(name: str, values: Any) -> Any:
    """A piece's Config from a dict (or an existing Config), validated."""
    cls = PIECES[name].Config
    cfg = values if isinstance(values, cls) else cls(**(values or {}))
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg
