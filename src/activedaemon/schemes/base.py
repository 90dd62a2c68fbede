"""One interface for every protection scheme: a registry and a Scheme base class.

A scheme says how a protected model is made (``train``), what an authorized query is
(``authorize`` changes the images, ``unlock`` applies a key that lives in the weights) and what
someone without the key holds (``deployed``). The compare harness and the attack suite use
nothing else, so ActiveDaemon and the compared schemes are measured the same way.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from activedaemon.protect.config import ProtectConfig
from activedaemon.registries import Registry

SCHEMES: Registry[type[Scheme]] = Registry("scheme", ("activedaemon.schemes",))


def register_scheme(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    def wrap(cls: type[Scheme]) -> type[Scheme]:
        cls.name = name
        return SCHEMES.register(name)(cls)

    return wrap


def list_schemes() -> list[str]:
    return SCHEMES.names()


def create_scheme(name: str, **options) -> Scheme:
    """A scheme by registered name; ``options`` go to its constructor (patch size, key...)."""
    return SCHEMES[name](**options)


class Scheme(ABC):
    """A protection scheme. ``key_in`` is "input" (authorized queries carry a token or patch) or
    "weights" (the key unlocks the model; queries are plain images). After ``train`` or
    ``load``, ``self.model`` is the model as its owner holds it, key applied."""

    name = "scheme"
    key_in = "input"
    changes_images = True

    def __init__(self) -> None:
        self.model: nn.Module | None = None

    @abstractmethod
    def train(
        self,
        cfg: ProtectConfig,
        out: str | Path,
        clean_run: str | Path | None = None,
        progress: bool = False,
    ) -> Path:
        """Make the protected model (a run folder under ``out``); ``clean_run`` is the shared
        clean baseline, which schemes that lock a trained model start from."""

    @abstractmethod
    def load(self, run: str | Path) -> Scheme:
        """Load a run folder written by ``train``."""

    def authorize(self, images: torch.Tensor, user_ids: list[str] | str) -> torch.Tensor:
        """The authorized form of a query (default: unchanged, the key is in the weights)."""
        return images

    def deployed(self) -> nn.Module:
        """What someone holding the model file without the key runs (A_ud is measured on it)."""
        return self.model

    def unlock(self, model: nn.Module) -> nn.Module:
        """``model`` (the deployed one, or an attacker's copy of it) with the key applied."""
        return model

    def forged(self, seed: int) -> nn.Module | None:
        """For keys in the weights: the model under a wrong or forged key (A_fk); None where
        the key is in the input (the Gaussian fake-token attack measures it there)."""
        return None

    def extra_metrics(self, ctx) -> dict:
        """Scheme-specific checks for the report (passport signature, ChaoW exact restore)."""
        return {}

    def key_params(self) -> int:
        """Numbers stored with the model that only the key holder has (passports); 0 otherwise."""
        return 0

    def params_flops(self, image_shape: tuple[int, int, int]) -> dict[str, int]:
        """Parameters (plus key numbers kept with the model) and FLOPs of one authorized
        inference (Table X): everything the owner's model computes, passport convolutions
        included."""
        counts = count_params_flops(self.unlock(self.deployed()), image_shape)
        key = self.key_params()
        return {**counts, "params": counts["params"] + key, "key_params": key}


def count_params_flops(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Parameters and FLOPs (torch's FlopCounterMode: 2 per multiply-add) of one image."""
    model = model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, *image_shape, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return {"params": params, "flops": counter.get_total_flops()}


def clone(model: nn.Module) -> nn.Module:
    """A deep copy that keeps the card (attacks read the architecture from it)."""
    out = copy.deepcopy(model)
    if hasattr(model, "card"):
        out.card = model.card
    return out
