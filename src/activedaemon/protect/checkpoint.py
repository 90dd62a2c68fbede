"""Trained classifiers on disk: their cards (activedaemon.cards) written and read back, the
loaders that build a run folder's model (``load_classifier``) or a protected model with the token
generator that wakes it (``load_protected``), and the fingerprint that pins an encoder.

Evaluation, attacks, schemes and the service import this module, not the trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from activedaemon.cards import ClassifierCard, read_card, write_card  # noqa: F401
from activedaemon.protect.models import build_classifier
from activedaemon.runs import CARD_FILE, WEIGHTS_FILE
from activedaemon.tokens import TokenGenerator
from activedaemon.tokens.generator import is_shipped_encoder, weights_sha256

if TYPE_CHECKING:
    from activedaemon.protect.config import ProtectConfig

log = logging.getLogger(__name__)

CARD_SCHEMA = ClassifierCard.SCHEMA


def encoder_fingerprint(encoder: str | Path | TokenGenerator) -> str:
    """SHA-256 of an encoder's weights file (run folder or shipped name, or a loaded generator,
    which knows it): what a protected model's card pins, wherever the encoder lies."""
    if isinstance(encoder, TokenGenerator) and encoder.weights_sha256:
        return encoder.weights_sha256
    if isinstance(encoder, TokenGenerator):
        raise ValueError("this token generator was not loaded from a file: it has no fingerprint")
    return weights_sha256(encoder)


def load_encoder(cfg: ProtectConfig, device: str | torch.device = "cpu") -> TokenGenerator:
    """The config's encoder, checked to work at the config's image size and channels (loaded
    once per run and passed down as the object)."""
    tokens = TokenGenerator.load(cfg.encoder, device)
    if is_shipped_encoder(cfg.encoder):
        log.warning(
            "encoder %s is shipped with the package: anyone who installs it can make tokens that "
            "wake this model, for any id. Fine for a demo; for a model you deploy, train your own "
            "encoder (activedaemon train-encoder) and keep it like a key.",
            cfg.encoder,
        )
    if (tokens.arch.image_size, tokens.arch.channels) != (cfg.image_size, cfg.channels):
        raise ValueError(
            f"encoder {cfg.encoder} works on {tokens.arch.channels}x{tokens.arch.image_size}px "
            f"images; set image_size={tokens.arch.image_size} channels={tokens.arch.channels}"
        )
    return tokens


def classifier_card(
    cfg: ProtectConfig,
    *,
    num_classes: int,
    class_names: list[str] | None,
    normalization: dict | None,
    chosen_epoch: int | None,
    model: torch.nn.Module | None = None,
    encoder: TokenGenerator | None = None,
    start: dict[str, Any] | None = None,
) -> ClassifierCard:
    """The card of a classifier trained under ``cfg`` (``model``: a Python module trained in
    place of ``cfg.arch``; ``encoder``: the generator that made its authorized samples)."""
    start = start or {}
    return ClassifierCard(
        arch=cfg.arch if model is None else f"module:{type(model).__qualname__}",
        width=cfg.width,
        num_classes=num_classes,
        class_names=class_names,
        image_size=cfg.image_size,
        channels=cfg.channels,
        normalization=normalization,
        dataset=cfg.dataset,
        protected=cfg.protected,
        encoder=cfg.encoder if encoder is not None else None,
        encoder_sha256=encoder_fingerprint(encoder) if encoder is not None else None,
        chosen_epoch=chosen_epoch,
        init_from=start.get("from"),
        fresh_head=start.get("fresh_head"),
        from_sha256=start.get("from_sha256"),
    )


def read_classifier_card(run: str | Path) -> ClassifierCard:
    """A run folder's classifier card, typed and migrated to the current schema."""
    run = Path(run)
    if not (run / CARD_FILE).is_file() or not (run / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{run} is not a classifier run: expected {CARD_FILE} and {WEIGHTS_FILE} "
            "(made by `activedaemon protect` or `activedaemon train-clean`)"
        )
    card = read_card(run, "classifier")
    assert isinstance(card, ClassifierCard)
    return card


def load_classifier(run: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained classifier of a run folder (protect or train-clean): an ``nn.Module`` in eval
    mode that takes [0, 1] images at the run's size and returns logits. ``model.card`` is the
    card as a dict (``model.card_info`` typed)."""
    run = Path(run)
    card = read_classifier_card(run)
    if card.is_module:
        raise ValueError(
            f"{run} holds the weights of a Python module ({card.arch}): build it and "
            "load weights.pt with load_state_dict"
        )
    norm = card.normalization or {}
    model = build_classifier(
        card.arch,
        card.num_classes,
        card.channels,
        card.width,
        mean=norm.get("mean"),
        std=norm.get("std"),
    )
    model.load_state_dict(torch.load(run / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.card = card.to_dict()
    model.card_info = card
    model.run_folder = run.resolve()  # where its card, results and reports lie (serve.console)
    return model.to(device).eval()


def load_protected(
    run: str | Path,
    encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> tuple[torch.nn.Module, TokenGenerator]:
    """A protected run's classifier and the token generator that wakes it. ``encoder`` (run
    folder or shipped name) defaults to the one on the model's card; another one is refused
    unless ``force`` (scoring a model with an encoder it was not protected with gives wrong
    numbers), and must work on the same image size and channels in any case."""
    model = load_classifier(run, device)
    card: ClassifierCard = model.card_info
    if encoder is None:
        if not card.encoder:
            raise ValueError(f"{run}'s card names no encoder (not an encoder-protected run)")
        encoder = card.encoder
    gen = TokenGenerator.load(encoder, device)
    pinned = card.encoder_sha256
    other = card.encoder and str(encoder) != str(card.encoder)
    if not force and other and (pinned is None or encoder_fingerprint(gen) != pinned):
        raise ValueError(
            f"{run} was protected with encoder {card.encoder!r}, not {str(encoder)!r}; "
            "its numbers would be wrong (force it with --force-encoder / force=True)"
        )
    if (gen.arch.image_size, gen.arch.channels) != (card.image_size, card.channels):
        raise ValueError(
            f"the encoder works on {gen.arch.channels}x{gen.arch.image_size}px images but the "
            f"model on {card.channels}x{card.image_size}px"
        )
    return model, gen
