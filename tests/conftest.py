import pytest

from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder

# A few-second encoder on 256 real Fashion-MNIST images: ids decode, tokens are visible.
QUICK_ENCODER = {**PRESETS["tiny"], "limit_test": 32}


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """(TokenGenerator, run folder) of the tiny preset, trained once per test session."""
    out = tmp_path_factory.mktemp("tiny-encoder")
    gen = train_encoder(EncoderTrainConfig.from_dict(QUICK_ENCODER), out, progress=False)
    return gen, out


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
    from activedaemon.protect import ProtectConfig, train_classifier

    out = tmp_path_factory.mktemp("tiny-protected")
    return train_classifier(ProtectConfig.from_dict(TINY_PROTECTED), out, progress=False)
