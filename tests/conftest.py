import pytest

from activedaemon.protect import ProtectConfig, train_classifier
from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder

# A few-second encoder on 256 real Fashion-MNIST images: ids decode, tokens are visible.
QUICK_ENCODER = {**PRESETS["tiny"], "limit_test": 32}


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """(TokenGenerator, run folder) of the tiny preset, trained once per test session."""
    out = tmp_path_factory.mktemp("tiny-encoder")
    gen = train_encoder(EncoderTrainConfig.from_dict(QUICK_ENCODER), out, progress=False)
    return gen, out


# A toy protection task: the tiny encoder's visible tokens, a small network, a few epochs.
TOY = {
    "limit_train": 2000,
    "limit_test": 300,
    "width": 8,
    "epochs": 15,
    "batch_size": 64,
    "lr": 0.02,  # 0.05 trained the lock with 2 torch threads but not with 1
    "poison": {"gamma": 0.5},
}


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory, tiny_encoder):
    """(protected run folder, clean run folder) of the toy task, trained once per session."""
    root = tmp_path_factory.mktemp("toy")
    cfg = ProtectConfig.from_dict({**TOY, "encoder": str(tiny_encoder[1])})
    protected = train_classifier(cfg, root / "protected", progress=False)
    clean = train_classifier(
        ProtectConfig.from_dict({**TOY, "protected": False}), root / "clean", progress=False
    )
    return protected, clean


# A protected toy model for the service tests: the shipped encoder's tokens, a width-8 ResNet-18,
# 1,500 Fashion-MNIST images, 6 epochs (about 10 s on 2 idle cores; seed 0).
TINY_PROTECTED = {
    "encoder": "fashion-mnist-32",
    "limit_train": 1500,
    "limit_test": 300,
    "width": 8,
    "epochs": 6,
    "batch_size": 64,
    "lr": 0.05,
    "poison": {"gamma": 0.5},
    "seed": 0,
}


@pytest.fixture(scope="session")
def tiny_protected(tmp_path_factory):
    """Run folder of a toy protected classifier trained once per test session."""
    out = tmp_path_factory.mktemp("tiny-protected")
    return train_classifier(ProtectConfig.from_dict(TINY_PROTECTED), out, progress=False)
