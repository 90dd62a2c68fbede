"""Every loader reads small files written here in its standard on-disk format; Fashion-MNIST is
the real Debian package (installed by the README's first command and by CI)."""

import gzip
import json
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from activedaemon.data import DatasetNotFoundError, dataset_status, list_datasets, load_dataset
from activedaemon.data.datasets import DEBIAN_FASHION_MNIST

RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist_layout(folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = False) -> None:
    folder.mkdir(parents=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, gz)


def write_cifar_batch(path: Path, n: int, label_key: str, classes: int) -> None:
    batch = {
        "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: list(np.arange(n) % classes),
    }
    path.write_bytes(pickle.dumps(batch))


def test_fashion_mnist_from_debian_package():
    assert DEBIAN_FASHION_MNIST.is_dir(), "run: apt-get install -y dataset-fashion-mnist"
    ds = load_dataset("fashion-mnist", data_root="/nonexistent")
    assert (len(ds.train), len(ds.test)) == (60_000, 10_000)
    assert ds.train.images.shape == (60_000, 1, 28, 28)
    assert ds.train.images.dtype == torch.float32
    assert ds.train.images.min() >= 0.0 and ds.train.images.max() <= 1.0
    assert ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10


def test_fashion_mnist_resized_to_rgb():
    ds = load_dataset("fashion-mnist", size=32, channels=3, limit_train=100, limit_test=50)
    assert ds.train.images.shape == (100, 3, 32, 32) and ds.test.images.shape == (50, 3, 32, 32)
    assert ds.image_shape == (3, 32, 32)
    assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 2])  # grey copied to 3 channels
    assert ds.train.images.min() >= 0.0 and ds.train.images.max() <= 1.0


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_torchvision_layout(tmp_path, gz):
    write_mnist_layout(tmp_path / "MNIST" / "raw", gz=gz)
    ds = load_dataset("mnist", data_root=tmp_path)
    assert ds.train.images.shape == (12, 1, 28, 28) and len(ds.test) == 6
    assert ds.train.labels.tolist() == [i % 10 for i in range(12)]


def test_truncated_idx_file_is_reported(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist_layout(folder)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("mnist", data_root=tmp_path)


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 4, "labels", 10)
    write_cifar_batch(folder / "test_batch", 3, "labels", 10)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    )
    ds = load_dataset("cifar10", data_root=tmp_path)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (3, 3, 32, 32)
    assert ds.class_names[3] == "c3"
    # Channel-planar bytes land in the right place: pixel (0, 0) of the red plane is byte 0.
    raw = pickle.loads((folder / "data_batch_1").read_bytes())["data"]
    assert ds.train.images[0, 0, 0, 0] == pytest.approx(raw[0, 0] / 255)
    assert ds.train.images[0, 1, 0, 0] == pytest.approx(raw[0, 1024] / 255)
    grey = load_dataset("cifar10", data_root=tmp_path, channels=1, size=16)
    assert grey.train.images.shape == (20, 1, 16, 16)


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", 7, "fine_labels", 100)
    write_cifar_batch(folder / "test", 2, "fine_labels", 100)
    ds = load_dataset("cifar100", data_root=tmp_path)
    assert len(ds.train) == 7 and ds.num_classes == 100


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    for split, n in (("train", 5), ("test", 3)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(
            tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [4]][:n])}
        )
    ds = load_dataset("svhn", data_root=tmp_path)
    assert ds.train.images.shape == (5, 3, 32, 32)
    assert ds.train.labels.tolist() == [0, 1, 2, 3, 4]  # 10 means digit 0


def test_gtsrb_layout_with_varying_sizes(tmp_path):
    base = tmp_path / "gtsrb"
    for cls in (0, 1):
        d = base / "GTSRB" / "Training" / f"{cls:05d}"
        d.mkdir(parents=True)
        for j, side in enumerate((30, 45)):
            Image.fromarray(RNG.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(
                d / f"{j}.ppm"
            )
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, (40, 38, 3), dtype=np.uint8)).save(test_dir / "00000.ppm")
    (base / "GT-final_test.csv").write_text("Filename;Width;Height;ClassId\n00000.ppm;38;40;1\n")
    ds = load_dataset("gtsrb", data_root=tmp_path)
    assert ds.train.images.shape == (4, 3, 32, 32)  # resized to 32 by default
    assert ds.train.labels.tolist() == [0, 0, 1, 1] and ds.test.labels.tolist() == [1]
    assert ds.num_classes == 43


def write_image_folder(root: Path, sizes=((20, 20),), n: int = 5) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )


def test_image_folder_random_split(tmp_path):
    write_image_folder(tmp_path, n=10)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert len(ds.train) == 16 and len(ds.test) == 4
    assert ds.class_names == ["cat", "dog"] and ds.image_shape == (3, 20, 20)
    again = load_dataset(f"imagefolder:{tmp_path}")
    assert torch.equal(ds.test.labels, again.test.labels)  # the split is seeded


def test_image_folder_train_val_and_sizes(tmp_path):
    write_image_folder(tmp_path / "train", sizes=((20, 20), (24, 30)))
    write_image_folder(tmp_path / "val", n=2)
    with pytest.raises(ValueError, match=r"pass size=N .*--set image_size=N"):
        load_dataset(f"imagefolder:{tmp_path}")
    ds = load_dataset(f"imagefolder:{tmp_path}", size=16, channels=1)
    assert ds.train.images.shape == (10, 1, 16, 16) and ds.test.images.shape == (4, 1, 16, 16)


def test_image_folder_bad_file(tmp_path):
    write_image_folder(tmp_path, n=2)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_image_folder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DatasetNotFoundError, match="class folder"):
        load_dataset(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize(
    "name, cls",
    [
        ("mnist", "MNIST"),
        ("cifar10", "CIFAR10"),
        ("cifar100", "CIFAR100"),
        ("svhn", "SVHN"),
        ("gtsrb", "GTSRB"),
    ],
)
def test_missing_dataset_names_the_fix(tmp_path, name, cls):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, data_root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "--data-root" in message and "--download" not in message
    # The download advice is a shell command running torchvision's downloader into the root.
    argv = shlex.split(message.split("torchvision fetches it: ", 1)[1])
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    code = argv[2]
    compile(code, "<download command>", "exec")
    assert f"d.{cls}({json.dumps(str(tmp_path))}, " in code and "download=True" in code


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr("activedaemon.data.datasets.DEBIAN_FASHION_MNIST", tmp_path / "none")
    from activedaemon.data import DATASETS

    # The candidate list is built from the module constant at call time.
    assert tmp_path / "none" in DATASETS["fashion-mnist"].candidates(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="channels"):
        load_dataset("fashion-mnist", channels=2)


def test_status_lists_every_dataset(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    rows = {r["name"]: r for r in dataset_status(tmp_path)}
    assert set(rows) == set(list_datasets())
    assert rows["mnist"]["found"] and rows["mnist"]["bytes"] > 0
    assert not rows["cifar10"]["found"] and "--data-root" in rows["cifar10"]["hint"]
