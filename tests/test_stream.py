"""Streaming data (``protect --stream``): images read per index from the standard formats, the
poisoned set assigned per index (same on every worker and rank, same counts as in memory) and
made per batch, and a short streaming protection run through the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from activedaemon.cli import main
from activedaemon.data import DatasetNotFoundError, load_dataset
from activedaemon.data.stream import KeyedPermutation, open_stream
from activedaemon.imageio import to_uint8
from activedaemon.protect import load_classifier
from activedaemon.protect.poison import (
    AUTHORIZED,
    CLEAN,
    PoisonConfig,
    PoisonPlan,
    build_poisoned_set,
    kind_code,
    poison_batch,
)
from activedaemon.protect.stream import TrainPart, flip_crop
from activedaemon.tokens import TokenGenerator
from tests.test_dataset_formats import pattern, write_cifar10, write_idx

ENCODER = "fashion-mnist-32"


def write_folder(root, n_per_class: int = 6, classes=("a_cat", "b_dog", "c_eel"), size=12):
    """PNG class folders of distinct patterns; returns the folder."""
    images = pattern(n_per_class * len(classes), size, size)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(n_per_class):
            Image.fromarray(images[c * n_per_class + j]).save(root / name / f"{j}.png")
    return root


def write_fashion_idx(root, n: int = 10, gz: bool = True):
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for stem, count in (("train", n), ("t10k", 2)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", pattern(count, 28, 28)[..., 0], gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", np.arange(count) % 10, gz)


@pytest.mark.parametrize("fmt", ["imagefolder", "idx", "idx-gz", "cifar10"])
def test_streamed_images_are_the_in_memory_ones(tmp_path, fmt):
    """Item i of the stream is image i of load_dataset's training split (resized, channels
    converted, 8 bits), with its label; IDX is memory-mapped, CIFAR converted once."""
    data = tmp_path / "data"
    if fmt == "imagefolder":
        name = f"imagefolder:{write_folder(data)}"
    elif fmt == "cifar10":
        write_cifar10(data)
        name = "cifar10"
    else:
        write_fashion_idx(data, gz=fmt == "idx-gz")
        name = "fashion-mnist"
    opts = {"size": 16, "channels": 1 if fmt == "cifar10" else 3}
    memory = load_dataset(name, data_root=data, **opts, limit_train=7)
    stream = open_stream(name, data, **opts, limit_train=7, cache_dir=tmp_path / "cache")
    assert len(stream.train) == len(memory.train) == 7
    assert stream.num_classes == memory.num_classes
    for i in range(7):
        image, label = stream.train[i]
        assert torch.equal(image, to_uint8(memory.train.images[i]))
        assert label == memory.train.labels[i]
    if fmt in ("idx", "idx-gz"):
        assert isinstance(stream.train.images, np.memmap)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 1000, 4099])
def test_keyed_permutation_is_a_bijection_with_an_inverse(n):
    perm = KeyedPermutation(n, key=7)
    positions = perm.position(np.arange(n))
    assert sorted(positions.tolist()) == list(range(n))
    assert np.array_equal(perm.index(positions), np.arange(n))
    if n >= 64:  # another key is another order
        assert not np.array_equal(KeyedPermutation(n, key=8).position(np.arange(n)), positions)


@pytest.mark.parametrize("strategy", ["near", "random"])
def test_plan_has_the_in_memory_counts_and_labels_per_index(strategy):
    """The plan's kinds have build_poisoned_set's exact counts; authorized samples keep their
    labels, the rest get the strategy's; every answer depends on (seed, index) only."""
    data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=400, limit_test=1)
    y = data.train.labels
    cfg = PoisonConfig(gamma=0.25, strategy=strategy, kinds={"noise": 0.2, "mismatched": 0.4})
    memory, _ = build_poisoned_set(data.train.images, y, 10, ENCODER, cfg)
    plan = PoisonPlan(400, 10, cfg)
    idx = np.arange(400)
    kinds = plan.kinds(idx)
    assert plan.counts() == memory.counts()
    assert {k: int((kinds == kind_code(k)).sum()) for k in memory.counts()} == memory.counts()
    labels = plan.labels(idx, y, kinds)
    auth = torch.from_numpy(kinds == AUTHORIZED)
    assert torch.equal(labels[auth], y[auth])
    if strategy == "near":
        assert torch.equal(labels[~auth], (y[~auth] + 1) % 10)
    else:
        assert (labels[~auth] != y[~auth]).all() and len(set(labels[~auth].tolist())) == 10
    # A fresh plan (another worker, another rank), asked in another order, answers the same.
    again = PoisonPlan(400, 10, cfg)
    some = np.random.default_rng(1).permutation(400)[:50]
    assert np.array_equal(again.kinds(some), kinds[some])
    assert again.user_ids(some) == [plan.user_ids(idx)[i] for i in some]
    assert torch.equal(again.labels(some, y[some], kinds[some]), labels[some])
    # Another seed is another assignment.
    other = PoisonPlan(400, 10, PoisonConfig(gamma=0.25, seed=1))
    assert not np.array_equal(
        other.kinds(idx), PoisonPlan(400, 10, PoisonConfig(gamma=0.25)).kinds(idx)
    )


def test_ranks_and_workers_agree_on_every_sample(tmp_path):
    """Two DDP ranks' shares of an epoch are disjoint, cover it, and carry the assignment the
    plan gives each index, whether read in the process or in a worker."""
    write_fashion_idx(tmp_path, n=40, gz=False)
    split = open_stream("fashion-mnist", tmp_path, size=32, channels=3).train
    cfg = PoisonConfig(gamma=0.3, strategy="random", seed=3)
    order = KeyedPermutation(len(split), 11)
    reference = TrainPart(split, order, 4, PoisonPlan(36, 10, cfg))
    seen = {}
    for rank, workers in ((0, 0), (1, 1)):
        part = TrainPart(split, order, 4, PoisonPlan(36, 10, cfg))  # as each rank builds it
        sampler = DistributedSampler(part, 2, rank, shuffle=True, seed=5, drop_last=True)
        sampler.set_epoch(2)
        loader = DataLoader(part, 6, sampler=sampler, collate_fn=lambda b: b, num_workers=workers)
        order_js = list(sampler)
        for batch, js in zip(loader, [order_js[i : i + 6] for i in range(0, 18, 6)], strict=True):
            expected = reference.__getitems__(js)
            for key in ("images", "labels", "true_labels", "kinds"):
                assert torch.equal(batch[key], expected[key])
            assert batch["user_ids"] == expected["user_ids"]
            seen.update(dict.fromkeys(js, rank))
    assert sorted(seen) == list(range(36))


def test_poison_batch_makes_each_kind():
    """Authorized rows carry their user's readable token, clean rows are unchanged, noise and
    moved-token rows change; the batch is on 8-bit levels."""
    gen = TokenGenerator.load(ENCODER)
    x = load_dataset(
        "fashion-mnist", size=32, channels=3, limit_train=64, limit_test=1
    ).train.images
    x = to_uint8(x).float() / 255
    cfg = PoisonConfig(gamma=0.3, kinds={"noise": 0.3, "mismatched": 0.3})
    plan = PoisonPlan(64, 10, cfg)
    kinds = torch.from_numpy(plan.kinds(np.arange(64)))
    ids = plan.user_ids(np.arange(64))
    out = poison_batch(
        x, kinds, ids, gen.embed, torch.Generator().manual_seed(0), lambda k: ids[:k], 0.02
    )
    assert torch.equal(out * 255, (out * 255).round())
    auth = (kinds == AUTHORIZED).nonzero()[:, 0]
    assert gen.identify(out[auth]) == [ids[i] for i in auth.tolist()]
    assert torch.equal(out[kinds == CLEAN], x[kinds == CLEAN])
    for name in ("noise", "mismatched"):
        rows = kinds == kind_code(name)
        assert rows.any() and (out[rows] != x[rows]).flatten(1).any(1).all()


def test_flip_crop_takes_a_flipped_or_plain_crop_of_each_padded_image():
    x = torch.rand(6, 3, 10, 10)
    out = flip_crop(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape and not torch.equal(out, x)
    padded = torch.nn.functional.pad(torch.cat([x, x.flip(3)]), (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        crops = [padded[j, :, dy : dy + 10, dx : dx + 10] for j in (i, i + 6)
                 for dy in range(5) for dx in range(5)]  # fmt: skip
        assert any(torch.equal(out[i], c) for c in crops)


def test_protect_stream_on_an_image_folder_via_the_cli(tmp_path, capsys):
    folder = write_folder(tmp_path / "photos", n_per_class=30, size=20)
    out = tmp_path / "run"
    argv = ["protect", "--preset", "tiny", "--dataset", f"imagefolder:{folder}", "--stream",
            "--workers", "1", "--batch-size", "16", "--set", "augment=flip-crop",
            "--out", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    metrics = run["metrics"]
    assert run["status"] == "done" and metrics["stream"] is True
    # 90 images: 18 held out as the test split, 4 (5 %) for validation, 68 trained on.
    assert metrics["train_images"] == 68 and metrics["val_images"] == 4
    assert metrics["poison_counts"] == {
        "authorized": 14,
        "noise": 14,
        "mismatched": 14,
        "clean": 26,
    }
    assert metrics["token_rms"] > 0 and len(metrics["history"]) == 1
    model = load_classifier(out)
    assert model.card["num_classes"] == 3 and model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    # Every random choice is seeded: reading in the training process gives the same weights.
    again = tmp_path / "again"
    assert main([*argv[:-3], "--workers", "0", "--out", str(again), "-q"]) == 0
    assert (again / "weights.pt").read_bytes() == (out / "weights.pt").read_bytes()


def test_stream_errors_name_the_problem(tmp_path, capsys):
    argv = ["protect", "--preset", "tiny", "--stream", "--out", str(tmp_path / "run"), "-q"]
    assert main([*argv, "--dataset", f"imagefolder:{tmp_path / 'nope'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        open_stream(f"imagefolder:{tmp_path / 'empty'}", size=8)
    bad = tmp_path / "bad"
    write_folder(bad / "train", n_per_class=2)
    write_folder(bad / "val", n_per_class=1)
    (bad / "train" / "a_cat" / "broken.png").write_bytes(b"not a png")
    split = open_stream(f"imagefolder:{bad}", size=8).train
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        [split[i] for i in range(len(split))]
    assert main([*argv, "--workers", "-1", "--dataset", f"imagefolder:{bad}"]) == 2
    assert "workers must be >= 0" in capsys.readouterr().err
    assert main([*argv[:3], *argv[4:], "--set", "augment=flip-crop"]) == 2  # without --stream
    assert "needs stream" in capsys.readouterr().err
