import os
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from activedaemon.protect import ProtectConfig, train_classifier
from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder


def write_random_image_folder(root, counts: dict[str, int], shape: tuple[int, int], cls: str):
    """An image folder root/<split>/<cls>/<i>.png of random RGB images (seed 0)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in counts.items():
        (root / split / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


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


# -- the service tests (test_serve*.py) ------------------------------------------------------------
PG_ENV = "ACTIVEDAEMON_TEST_PG_URL"
ENCODER = "fashion-mnist-32"


@pytest.fixture(scope="module")
def generator():
    from activedaemon.tokens import TokenGenerator

    return TokenGenerator.load(ENCODER)


@pytest.fixture(scope="module")
def test_images():
    from activedaemon.data import load_dataset

    data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=0, limit_test=200)
    return data.test.images, data.test.labels


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty registry database: a SQLite file, or a new schema on the PostgreSQL server."""
    from activedaemon.serve.registry import sqlite_url

    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "registry.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL run not done: {PG_ENV} is not set (.ci/run sets it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run, db, port, log, admin_key, extra=()) -> tuple[subprocess.Popen, str]:
    """`activedaemon serve` for the run (its card's encoder) on a SQLite registry ``db``, one
    torch thread, output to ``log``; returns once /healthz answers (at most 180 s)."""
    from activedaemon.serve.registry import sqlite_url

    env = {**os.environ, "ACTIVEDAEMON_ADMIN_KEY": admin_key, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "activedaemon.cli", "serve", "--model", str(run),
           "--db", sqlite_url(db), "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not answer /healthz within 180 s")
