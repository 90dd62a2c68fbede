"""Passports (Fan et al., DeepIPR, NeurIPS 2019): passport layers after convolutions.

The normalisation after a passported convolution has no learned affine parameters; its scale
and bias are gamma = Avg(W * P_gamma) and beta = Avg(W * P_beta), the convolution's own weights
applied to two secret passport tensors. Training uses the owner's passports and a sign loss
sum(relu(0.1 - gamma_i b_i)) that writes a signature b (+-1 per channel) into the signs of the
scales. A forged or missing passport gives other scales and biases, and ruins accuracy. The
passports are extra numbers stored with the key (Table X: passports add parameters).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from activedaemon.protect import train_classifier
from activedaemon.protect.checkpoint import load_classifier
from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.passport_net import (  # noqa: F401  (the classifier lives in protect)
    PASSPORT_HW,
    PassportNorm,
    passport_layers,
    passport_resnet18,
)
from activedaemon.protect.pieces import PieceEnv, TrainingPiece
from activedaemon.schemes.base import Scheme, clone, register_scheme


def set_passports(model: nn.Module, passports: list[dict[str, torch.Tensor]]) -> nn.Module:
    """A copy of ``model`` with the given passports (one dict of gamma/beta per layer)."""
    return write_passports(clone(model), passports)


@torch.no_grad()
def write_passports(model: nn.Module, passports: list[dict[str, torch.Tensor]]) -> nn.Module:
    """``model`` itself, its passport layers set to ``passports``."""
    for layer, p in zip(passport_layers(model), passports, strict=True):
        layer.passport_gamma.copy_(p["gamma"])
        layer.passport_beta.copy_(p["beta"])
    return model


class SignLoss(TrainingPiece):
    """The passport scheme's piece of the shared training loop: sets the owner's passports in
    the model being trained and adds the weighted sign loss that writes the signature."""

    def __init__(self, scheme: Passport, env: PieceEnv) -> None:
        super().__init__(None, env)
        write_passports(env.model, random_passports(env.model, scheme.passport_seed))
        self.weight, self.total, self.steps = scheme.sign_weight, 0.0, 0

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        sign = sum(layer.sign_loss() for layer in passport_layers(self.env.model))
        self.total, self.steps = self.total + float(sign.detach()), self.steps + 1
        return self.weight * sign

    def epoch_summary(self) -> dict[str, float]:
        row = {"sign_loss": round(self.total / max(self.steps, 1), 4)}
        self.total, self.steps = 0.0, 0
        return row


def random_passports(model: nn.Module, seed: int, zero: bool = False) -> list[dict]:
    """Forged passports of the right shapes (N(0, 1), as the owner's), or zeros (no passport)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in passport_layers(model):
        shape = layer.passport_gamma.shape
        pair = [torch.zeros(shape) if zero else torch.randn(shape, generator=gen) for _ in "gb"]
        out.append({"gamma": pair[0], "beta": pair[1]})
    return out


def signature_match(model: nn.Module) -> float:
    """% of signature bits read back from the signs of the scales (DeepIPR's verification)."""
    hits = total = 0
    with torch.no_grad():
        for layer in passport_layers(model):
            gamma, _ = layer.scale_bias()
            hits += (gamma.sign() == layer.signature).sum().item()
            total += len(gamma)
    return 100 * hits / max(total, 1)


@register_scheme("passport")
class Passport(Scheme):
    """DeepIPR passports on a CIFAR ResNet-18 (passports in stages 3-4), trained from scratch
    with the owner's passports and the sign loss; queries are plain images."""

    key_in = "weights"
    changes_images = False

    def __init__(
        self, sign_weight: float = 0.1, passport_seed: int = 2019, forged_seed: int = 12345
    ) -> None:
        super().__init__()
        self.sign_weight, self.forged_seed = sign_weight, forged_seed
        self.passport_seed = passport_seed  # the owner's passports (the key)
        self.passports: list[dict] = []

    def train(self, cfg, out, clean_run=None, progress=False) -> Path:
        """The shared training loop (schedule, validation split, epoch choice) on the clean
        training set, with the owner's passports and the sign loss as a training piece."""
        cfg = replace(cfg, arch="passport-resnet18", protected=False)
        run = train_classifier(cfg, out, progress=progress, extra_pieces=[partial(SignLoss, self)])
        self.load(run)
        return run

    def load(self, run) -> Passport:
        self.model = load_classifier(run)
        self.passports = [
            {"gamma": p.passport_gamma.clone(), "beta": p.passport_beta.clone()}
            for p in passport_layers(self.model)
        ]
        return self

    def deployed(self) -> nn.Module:
        """The weights without the owner's passports: a thief must guess (forge) them."""
        return set_passports(self.model, random_passports(self.model, self.forged_seed))

    def unlock(self, model: nn.Module) -> nn.Module:
        return set_passports(model, self.passports)

    def forged(self, seed: int) -> nn.Module:
        return set_passports(self.model, random_passports(self.model, seed))

    def missing(self) -> nn.Module:
        """No passport at all (zeros): every passported layer outputs zero."""
        return set_passports(self.model, random_passports(self.model, 0, zero=True))

    def extra_metrics(self, ctx) -> dict:
        return {
            "A_missing_passport": ctx.acc(ctx.test_x, model=self.missing()),
            "signature_match_pct": signature_match(self.model),
            "signature_match_forged_pct": signature_match(self.deployed()),
        }

    def key_params(self) -> int:
        return sum(p["gamma"].numel() + p["beta"].numel() for p in self.passports)
