"""ActiveDaemon behind the scheme interface: invisible user-specific tokens from the encoder,
protection training with the recommended recipe (or Algorithm 2 as the harness's preset has it,
with ``recipe=None``)."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch

from activedaemon.data.config import DataConfig
from activedaemon.protect import train_classifier
from activedaemon.protect.checkpoint import load_classifier
from activedaemon.protect.config import load_preset, merge, resolve_config
from activedaemon.protect.pieces import PIECES
from activedaemon.schemes.base import Scheme, register_scheme
from activedaemon.tokens import TokenGenerator


@register_scheme("activedaemon")
class ActiveDaemon(Scheme):
    """Tokens made by the encoder G_e from the user id; the model wakes only on them."""

    def __init__(self, encoder: str | None = None, recipe: str | None = "cpu-recommended"):
        super().__init__()
        # The recipe's protection options (its data, architecture and width are the harness's).
        self.recipe = load_preset(recipe) if recipe else {}
        for key in [f.name for f in fields(DataConfig)] + ["arch", "width", "seed"]:
            self.recipe.pop(key, None)
        self.encoder_name = encoder or self.recipe.get("encoder", "fashion-mnist-32")
        self.encoder = TokenGenerator.load(self.encoder_name)

    def train(self, cfg, out, clean_run=None, progress=False) -> Path:
        if self.recipe:  # the harness's data and network, the recipe's training
            harness = {k: v for k, v in cfg.to_values().items() if k not in PIECES.names()}
            fixed = (
                {"init_from": str(clean_run)} if clean_run and "warm_start" in self.recipe else {}
            )
            cfg = resolve_config(merge(harness, self.recipe), fixed=fixed)
        cfg = replace(cfg, protected=True, encoder=self.encoder_name)
        run = train_classifier(cfg, out, progress=progress)
        self.load(run)
        return run

    def load(self, run) -> ActiveDaemon:
        self.model = load_classifier(run)
        return self

    def authorize(self, images: torch.Tensor, user_ids) -> torch.Tensor:
        return self.encoder.embed(images, user_ids)
