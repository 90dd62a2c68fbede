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
