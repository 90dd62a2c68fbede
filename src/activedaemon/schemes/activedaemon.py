"""ActiveDaemon behind the scheme interface: invisible user-specific tokens from the encoder,
poisoned training (Algorithm 2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from activedaemon.protect import train_classifier
from activedaemon.protect.checkpoint import load_classifier
from activedaemon.schemes.base import Scheme, register_scheme
from activedaemon.tokens import TokenGenerator


@register_scheme("activedaemon")
class ActiveDaemon(Scheme):
    """Tokens made by the encoder G_e from the user id; the model wakes only on them."""

    def __init__(self, encoder: str = "fashion-mnist-32") -> None:
        super().__init__()
        self.encoder_name = encoder
        self.encoder = TokenGenerator.load(encoder)

    def train(self, cfg, out, clean_run=None, progress=False) -> Path:
        cfg = replace(cfg, protected=True, encoder=self.encoder_name)
        run = train_classifier(cfg, out, progress=progress)
        self.load(run)
        return run

    def load(self, run) -> ActiveDaemon:
        self.model = load_classifier(run)
        return self

    def authorize(self, images: torch.Tensor, user_ids) -> torch.Tensor:
        return self.encoder.embed(images, user_ids)
