"""What a saved model is: the typed cards of classifier and encoder run folders (``card.yaml``
beside ``weights.pt``), with their schema version and the migration of older cards.

A card is read through ``read_card`` (any kind) or the loaders built on it (protect.checkpoint's
``load_classifier`` / ``load_protected``, tokens' ``TokenGenerator.load``), never as a dict
literal: a field added here is written by every trainer and read back by every loader, and a card
of an older schema is brought up to date on reading (``migrate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from activedaemon.runs import CARD_FILE

CLASSIFIER_SCHEMA = 1
ENCODER_SCHEMA = 1


@dataclass(kw_only=True)
class ClassifierCard:
    """A trained classifier (``protect`` / ``train-clean``): how to build it, what data it was
    trained on, and for a protected model the encoder that wakes it (pinned by SHA-256)."""

    KIND: ClassVar[str] = "classifier"
    SCHEMA: ClassVar[int] = CLASSIFIER_SCHEMA

    arch: str
    width: int
    num_classes: int
    class_names: list[str] | None = None
    image_size: int
    channels: int
    normalization: dict[str, list[float]] | None = None  # mean / std applied inside the model
    dataset: str | None = None
    protected: bool = False
    encoder: str | None = None
    encoder_sha256: str | None = None
    chosen_epoch: int | None = None
    # Where training started (protect.start): ``from`` on the card; None = fresh weights.
    init_from: str | None = None
    fresh_head: bool | None = None
    from_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer writers, kept as read

    @property
    def is_module(self) -> bool:
        """The weights of a Python module the owner builds (``protect(model, ...)``)."""
        return self.arch.startswith("module:")

    def to_dict(self) -> dict[str, Any]:
        """The card as written to card.yaml (keys in a stable order; ``from`` only when set)."""
        out: dict[str, Any] = {"kind": self.KIND, "schema": self.SCHEMA}
        for f in fields(self):
            if f.name == "extra" or f.name in _START_KEYS.values():
                continue
            out[f.name] = getattr(self, f.name)
        for key, name in _START_KEYS.items():
            if getattr(self, name) is not None:
                out[key] = getattr(self, name)
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifierCard:
        values = migrate(values, cls.KIND)
        values = {_START_KEYS.get(k, k): v for k, v in values.items()}
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names and k not in ("kind", "schema")}
        return cls(**known, extra=extra)


_START_KEYS = {"from": "init_from", "fresh_head": "fresh_head", "from_sha256": "from_sha256"}


@dataclass(kw_only=True)
class EncoderCard:
    """A trained token encoder / decoder (``train-encoder``): the network architecture
    (tokens.networks.ArchConfig as a dict) and what the training run recorded."""

    KIND: ClassVar[str] = "encoder"
    SCHEMA: ClassVar[int] = ENCODER_SCHEMA

    arch: dict[str, Any]
    dataset: str | None = None
    image_size: int | None = None
    channels: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # training config, metrics, notes

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND, "schema": self.SCHEMA}
        for key in ("dataset", "image_size", "channels"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra, "arch": self.arch}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderCard:
        values = migrate(values, cls.KIND)
        if "arch" not in values:
            raise ValueError("an encoder card needs an 'arch' section")
        known = {k: values[k] for k in ("arch", "dataset", "image_size", "channels") if k in values}
        skip = {*known, "kind", "schema"}
        return cls(**known, extra={k: v for k, v in values.items() if k not in skip})


CARDS: dict[str, type[ClassifierCard] | type[EncoderCard]] = {
    "classifier": ClassifierCard,
    "encoder": EncoderCard,
}
# (kind, from schema) -> a function that brings a card one schema up.
MIGRATIONS: dict[tuple[str, int], Callable[[dict], dict]] = {}


def _migration(kind: str, schema: int):
    def add(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        MIGRATIONS[(kind, schema)] = fn
        return fn

    return add


@_migration("classifier", 0)
def _classifier_0_to_1(card: dict) -> dict:
    """Cards written before the schema field: no kind, no pinned encoder, no normalisation
    (the model then normalises with the defaults of protect.models), protected = has an
    encoder."""
    card.setdefault("protected", bool(card.get("encoder")))
    card.setdefault("encoder_sha256", None)
    card.setdefault("normalization", None)
    card.setdefault("width", 16)
    return card


@_migration("encoder", 0)
def _encoder_0_to_1(card: dict) -> dict:
    """Encoder cards written before kind and schema: the image size and channels sat in the
    architecture only."""
    arch = card.get("arch") or {}
    for key in ("image_size", "channels"):
        if key in arch:
            card.setdefault(key, arch[key])
    return card


def card_kind(values: dict[str, Any]) -> str:
    """A card's kind; cards older than the kind field: an encoder has a mapping ``arch``."""
    if "kind" in values:
        return str(values["kind"])
    return "encoder" if isinstance(values.get("arch"), dict) else "classifier"


def migrate(values: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """A card's values brought to the current schema of its kind (a copy; newer schemas than
    this version knows are refused)."""
    card = dict(values)
    kind = kind or card_kind(card)
    found = card_kind(card)
    if found != kind:
        raise ValueError(f"a {found} card where a {kind} card was expected")
    schema, current = int(card.get("schema", 0)), CARDS[kind].SCHEMA
    if schema > current:
        raise ValueError(
            f"{kind} card of schema {schema}; this version of activedaemon reads up to {current}"
        )
    while schema < current:
        card = MIGRATIONS[(kind, schema)](card)
        schema += 1
    return {**card, "kind": kind, "schema": current}


def read_card(folder: str | Path, kind: str | None = None) -> ClassifierCard | EncoderCard:
    """The card of a run folder, typed and migrated (``kind`` checks what it must be)."""
    path = Path(folder) / CARD_FILE
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds no mapping")
    try:
        return CARDS[kind or card_kind(values)].from_dict(values)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a valid {kind or 'model'} card ({e})") from None


def write_card(folder: str | Path, card: ClassifierCard | EncoderCard) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(yaml.safe_dump(card.to_dict(), sort_keys=False))
    return path
