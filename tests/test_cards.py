"""Model cards: typed, written by the trainers and read back by the loaders, older cards migrated
on reading; one encoder load per protection run."""

import hashlib

import pytest
import torch
import yaml

from activedaemon.cards import (
    CLASSIFIER_SCHEMA,
    ClassifierCard,
    EncoderCard,
    migrate,
    read_card,
    write_card,
)
from activedaemon.protect.checkpoint import encoder_fingerprint, load_classifier, load_protected
from activedaemon.protect.config import resolve_config
from activedaemon.protect.models import build_classifier
from activedaemon.tokens import TokenGenerator
from activedaemon.tokens.generator import resolve_encoder_path

ENCODER = "fashion-mnist-32"


def old_classifier_run(tmp_path, **card):
    """A run folder as written before cards had kind and schema."""
    net = build_classifier("resnet18", 10, 3, 4)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    values = {"arch": "resnet18", "width": 4, "num_classes": 10, "image_size": 32, "channels": 3}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump({**values, **card}))
    return tmp_path, net


def test_an_old_classifier_card_is_migrated_and_loads(tmp_path):
    run, net = old_classifier_run(tmp_path, encoder=ENCODER)
    card = read_card(run)
    assert isinstance(card, ClassifierCard)
    assert card.protected is True and card.encoder_sha256 is None and card.normalization is None
    model = load_classifier(run)
    assert model.card["schema"] == CLASSIFIER_SCHEMA and model.card["kind"] == "classifier"
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), net.eval()(x))
    _, gen = load_protected(run)  # the card's encoder, unpinned
    assert gen.arch.image_size == 32


def test_a_newer_card_is_refused_and_unknown_keys_are_kept(tmp_path):
    with pytest.raises(ValueError, match="reads up to"):
        migrate({"kind": "classifier", "schema": CLASSIFIER_SCHEMA + 1})
    values = {"kind": "classifier", "schema": 1, "arch": "resnet18", "width": 4,
              "num_classes": 10, "image_size": 32, "channels": 3, "note": "kept"}  # fmt: skip
    card = ClassifierCard.from_dict(values)
    assert card.extra == {"note": "kept"}
    write_card(tmp_path, card)
    assert read_card(tmp_path) == card
    with pytest.raises(ValueError, match="classifier card where a encoder"):
        read_card(tmp_path, "encoder")


def test_card_round_trip_keeps_the_start_record(tmp_path):
    card = ClassifierCard(arch="resnet18", width=4, num_classes=10, image_size=32, channels=3,
                          init_from="runs/clean", fresh_head=False)  # fmt: skip
    values = card.to_dict()
    assert values["from"] == "runs/clean" and "init_from" not in values
    assert "from_sha256" not in values  # only what was set
    assert ClassifierCard.from_dict(values) == card


def test_encoder_cards_and_fingerprints():
    card = read_card(resolve_encoder_path(ENCODER))
    assert isinstance(card, EncoderCard) and card.arch["image_size"] == 32
    gen = TokenGenerator.load(ENCODER)
    weights = (resolve_encoder_path(ENCODER) / "weights.pt").read_bytes()
    assert encoder_fingerprint(gen) == encoder_fingerprint(ENCODER)
    assert encoder_fingerprint(gen) == hashlib.sha256(weights).hexdigest()
    assert migrate({"arch": {"image_size": 32, "channels": 3}})["image_size"] == 32


def test_a_protect_run_loads_its_encoder_once(tmp_path, monkeypatch):
    from activedaemon.protect import train_classifier

    loads = []
    real = TokenGenerator.load.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(TokenGenerator, "load", classmethod(counting))
    cfg = resolve_config("tiny", overrides={"limit_train": 256, "limit_test": 32})
    run = train_classifier(cfg, tmp_path / "run", progress=False)
    assert loads == [ENCODER]
    card = read_card(run)
    assert card.encoder == ENCODER and card.encoder_sha256 == encoder_fingerprint(ENCODER)
    assert card.protected and card.chosen_epoch == 1
