"""ChaoW (Lin et al., TCAD 2021): the weights of every conv / linear layer are permuted by a
chaotic key. A logistic map x_{n+1} = r x_n (1 - x_n) (r = 3.99, x_0 from the key) gives one
sequence per layer; its argsort is the permutation. The right key restores the trained weights
exactly; a wrong key (or none) leaves them scrambled. Nothing is added: same parameters, same
FLOPs (Table X)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from activedaemon.protect.checkpoint import load_classifier
from activedaemon.runs import run_record
from activedaemon.schemes.base import Scheme, clone, register_scheme

R, BURN_IN = 3.99, 1000
LOCKED_FILE = "locked.pt"


def key_to_x0(key: str) -> float:
    """The map's seed x_0 in (0.01, 0.99) from a key string (any string; SHA-256)."""
    v = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return 0.01 + 0.98 * v


def logistic_sequence(x0: float, n: int, r: float = R, burn_in: int = BURN_IN) -> np.ndarray:
    """n values of the logistic map after ``burn_in`` steps (float64, chaotic for r ~ 4)."""
    x = x0
    for _ in range(burn_in):
        x = r * x * (1 - x)
    out = np.empty(n)
    for i in range(n):
        x = r * x * (1 - x)
        out[i] = x
    return out


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def permutations(model: nn.Module, key: str) -> dict[str, torch.Tensor]:
    """One permutation of the flattened weight per conv / linear layer, from one chaotic sequence
    per layer (seeded by the key and the layer's name)."""
    return {
        name: torch.from_numpy(
            np.argsort(
                logistic_sequence(key_to_x0(f"{key}/{name}"), m.weight.numel()), kind="stable"
            )
        )
        for name, m in _layers(model)
    }


@torch.no_grad()
def lock(model: nn.Module, key: str) -> nn.Module:
    """A copy of ``model`` with each layer's weights permuted: w'[i] = w[perm[i]]."""
    out = clone(model)
    perms = permutations(out, key)
    for name, m in _layers(out):
        flat = m.weight.flatten()
        m.weight.copy_(flat[perms[name]].view_as(m.weight))
    return out


@torch.no_grad()
def unlock(model: nn.Module, key: str) -> nn.Module:
    """A copy of ``model`` with the permutations of ``key`` undone (exact for the right key)."""
    out = clone(model)
    perms = permutations(out, key)
    for name, m in _layers(out):
        flat = torch.empty_like(m.weight.flatten())
        flat[perms[name]] = m.weight.flatten()
        m.weight.copy_(flat.view_as(m.weight))
    return out


@register_scheme("chaow")
class ChaoW(Scheme):
    """Lock a normally trained model (the shared clean baseline) with a chaotic permutation key."""

    key_in = "weights"
    changes_images = False

    def __init__(self, key: str = "chaow-owner-key") -> None:
        super().__init__()
        self.key = key
        self.locked: nn.Module | None = None

    def train(self, cfg, out, clean_run=None, progress=False) -> Path:
        if clean_run is None:
            raise ValueError("chaow locks a trained model: pass clean_run")
        config = {"clean_run": str(clean_run), "r": R}
        with run_record(out, "scheme-chaow", config, cfg.seed) as rec:
            model = load_classifier(clean_run)
            locked = lock(model, self.key)
            torch.save(locked.state_dict(), rec.out / LOCKED_FILE)
            pairs = zip(_layers_weights(model), _layers_weights(locked), strict=True)
            changed = sum((a != b).sum().item() for (_, a), (_, b) in pairs)
            rec.metrics = {"weights_moved": changed, "clean_run": str(clean_run)}
        self.locked, self.model = locked.eval(), model.eval()
        return rec.out

    def load(self, run) -> ChaoW:
        run = Path(run)
        record = json.loads((run / "run.json").read_text())
        base = load_classifier(record["metrics"]["clean_run"])
        base.load_state_dict(torch.load(run / LOCKED_FILE, weights_only=True))
        self.locked = base.eval()
        self.model = unlock(base, self.key).eval()
        return self

    def deployed(self) -> nn.Module:
        return self.locked

    def unlock(self, model: nn.Module) -> nn.Module:
        return unlock(model, self.key)

    def extra_metrics(self, ctx) -> dict:
        restored = unlock(self.locked, self.key).state_dict()
        exact = all(torch.equal(v, restored[k]) for k, v in self.model.state_dict().items())
        return {"right_key_restores_exactly": exact}

    def forged(self, seed: int) -> nn.Module:
        return unlock(self.locked, f"wrong-key-{seed}")


def _layers_weights(model: nn.Module):
    return [(n, m.weight) for n, m in _layers(model)]
