"""Each reader against tiny files written in its data set's exact on-disk format, checked pixel by
pixel: every value is a known function of (image, channel, row, column), so a transposed axis,
swapped channel, reordered batch or shifted label shows up."""

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from activedaemon.data import load_dataset


def pattern(n: int, h: int, w: int, offset: int = 0) -> np.ndarray:
    """uint8 (n, h, w, 3): value = (offset + 17 n + 80 c + 3 r + 7 k) mod 256 for image n,
    channel c (R, G, B), row r, column k; channels of one pixel always differ."""
    i, r, k, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((offset + 17 * i + 80 * c + 3 * r + 7 * k) % 256).astype(np.uint8)


def as_bytes(images: torch.Tensor) -> torch.Tensor:
    """The loader's float [0, 1] NCHW images back to uint8 NHWC."""
    return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def assert_images(images: torch.Tensor, expected: np.ndarray) -> None:
    assert images.dtype == torch.float32 and images.shape[1] == expected.shape[-1]
    assert torch.equal(as_bytes(images), torch.from_numpy(expected))


# -- CIFAR-10: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta --
class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str (BINSTRING opcodes), as cPickle wrote the CIFAR
    files: they load only with encoding="latin1" (the default ascii fails on the pixel bytes)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2 / numpy 1 did (numpy.core, not numpy._core)."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_py2_pickles_need_latin1():
    raw = py2_pickle({"data": pattern(1, 32, 32).reshape(1, -1), "labels": [3]})
    assert b"numpy.core.multiarray" in raw
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    assert pickle.loads(raw, encoding="latin1")["labels"] == [3]


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """CIFAR's (N, 3072) rows: the 1024 red values (row-major), then green, then blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> tuple[np.ndarray, ...]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_labels = [], []
    for b in range(1, 6):
        images = pattern(per_batch, 32, 32, offset=50 * b)
        labels = [(b + j) % 10 for j in range(per_batch)]
        batch = {
            "batch_label": f"training batch {b} of 5",
            "labels": labels,
            "data": cifar_rows(images),
            "filenames": [f"img_{b}_{j}.png" for j in range(per_batch)],
        }
        (folder / f"data_batch_{b}").write_bytes(py2_pickle(batch))
        train.append(images)
        train_labels += labels
    test = pattern(n_test, 32, 32, offset=3)
    test_labels = [9 - j for j in range(n_test)]
    (folder / "test_batch").write_bytes(
        py2_pickle({"batch_label": "testing batch 1 of 1", "labels": test_labels,
                      "data": cifar_rows(test), "filenames": []})
    )  # fmt: skip
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    meta = {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return np.concatenate(train), np.array(train_labels), test, np.array(test_labels)


def test_cifar10_exact_pixels_labels_and_batch_order(tmp_path):
    train, train_labels, test, test_labels = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", data_root=tmp_path)
    assert (len(ds.train), len(ds.test), ds.num_classes) == (15, 4, 10)
    assert_images(ds.train.images, train)  # batches 1..5 in order, R/G/B planes, row-major
    assert_images(ds.test.images, test)
    assert ds.train.labels.tolist() == train_labels.tolist()
    assert ds.test.labels.tolist() == test_labels.tolist()
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    # Pixel (row 2, column 5) of image 0: R, G, B are bytes 2*32+5 of each 1024-value plane.
    row = cifar_rows(train[:1])[0]
    px = ds.train.images[0, :, 2, 5] * 255
    assert px.round().tolist() == [row[69], row[1024 + 69], row[2048 + 69]]


def test_cifar10_limits_keep_the_first_images(tmp_path):
    train, _, test, _ = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", data_root=tmp_path, limit_train=4, limit_test=2)
    assert_images(ds.train.images, train[:4])  # spans data_batch_1 and data_batch_2
    assert_images(ds.test.images, test[:2])


# -- CIFAR-100: cifar-100-python/train, test, meta --
def test_cifar100_uses_fine_labels_and_meta_names(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    splits = {}
    for split, n, offset in (("train", 6, 11), ("test", 2, 99)):
        images = pattern(n, 32, 32, offset)
        fine = [(37 * j + 5) % 100 for j in range(n)]
        coarse = [j % 20 for j in range(n)]
        batch = {"filenames": [], "batch_label": split, "fine_labels": fine,
                 "coarse_labels": coarse, "data": cifar_rows(images)}  # fmt: skip
        (folder / split).write_bytes(py2_pickle(batch))
        splits[split] = images, fine
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    meta = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
    (folder / "meta").write_bytes(py2_pickle(meta))
    ds = load_dataset("cifar100", data_root=tmp_path)
    assert (ds.num_classes, ds.class_names[42]) == (100, "fine42")
    for split in ("train", "test"):
        images, fine = splits[split]
        assert_images(getattr(ds, split).images, images)
        assert getattr(ds, split).labels.tolist() == fine


# -- SVHN: train_32x32.mat / test_32x32.mat, X (32, 32, 3, N), y (N, 1) in 1..10 --
def test_svhn_mat_axes_and_label_ten_is_digit_zero(tmp_path):
    from scipy.io import savemat

    expected = {}
    for split, n, offset in (("train", 5, 0), ("test", 3, 77)):
        images = pattern(n, 32, 32, offset)  # (N, H, W, C)
        y = np.array([[10], [1], [9], [10], [2]][:n], np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
        expected[split] = images, [0 if v == 10 else int(v) for v in y[:, 0]]
    ds = load_dataset("svhn", data_root=tmp_path)
    assert ds.num_classes == 10 and ds.class_names[0] == "0"
    for split in ("train", "test"):
        images, labels = expected[split]
        assert_images(getattr(ds, split).images, images)
        assert getattr(ds, split).labels.tolist() == labels
    assert ds.train.labels.tolist() == [0, 1, 9, 0, 2]


def test_svhn_in_its_own_folder(tmp_path):
    from scipy.io import savemat

    (tmp_path / "svhn").mkdir()
    for split in ("train", "test"):
        x = pattern(2, 32, 32).transpose(1, 2, 3, 0)
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": np.array([[3], [10]])})
    assert load_dataset("svhn", data_root=tmp_path).test.labels.tolist() == [3, 0]


# -- GTSRB: torchvision's layout: gtsrb/GTSRB/Training/000NN/*.ppm + GT-000NN.csv,
#    gtsrb/GTSRB/Final_Test/Images/*.ppm, gtsrb/GT-final_test.csv ---------------------------------
GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def write_gtsrb(root: Path, classes=(0, 2, 42), per_class: int = 2) -> dict:
    base = root / "gtsrb"
    train, train_labels = [], []
    for cls in classes:
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        images = pattern(per_class, 32, 32, offset=cls)
        rows = []
        for j, im in enumerate(images):
            name = f"{j:05d}_{0:05d}.ppm"
            Image.fromarray(im).save(folder / name)
            rows.append(f"{name};32;32;5;5;27;27;{cls}\n")
        (folder / f"GT-{cls:05d}.csv").write_text(GT_HEADER + "".join(rows))
        train.append(images)
        train_labels += [cls] * per_class
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    test = pattern(3, 32, 32, offset=200)
    test_labels = [42, 0, 2]
    rows = []
    for j, (im, cls) in enumerate(zip(test, test_labels, strict=True)):
        Image.fromarray(im).save(test_dir / f"{j:05d}.ppm")
        rows.append(f"{j:05d}.ppm;32;32;5;5;27;27;{cls}\n")
    (base / "GT-final_test.csv").write_text(GT_HEADER + "".join(rows))
    return {"train": (np.concatenate(train), train_labels), "test": (test, test_labels)}


def test_gtsrb_exact_pixels_and_class_ids_of_a_subset(tmp_path):
    """Class folders 00000, 00002, 00042 only: a training image's label is its folder's number,
    the same numbering as the test CSV's ClassId (torchvision's reader would give 0, 1, 2)."""
    expected = write_gtsrb(tmp_path)
    ds = load_dataset("gtsrb", data_root=tmp_path)
    assert ds.num_classes == 43
    for split in ("train", "test"):
        images, labels = expected[split]
        assert_images(getattr(ds, split).images, images)
        assert getattr(ds, split).labels.tolist() == labels
    assert ds.train.labels.tolist() == [0, 0, 2, 2, 42, 42]


def test_gtsrb_images_of_other_sizes_are_resized(tmp_path):
    write_gtsrb(tmp_path, classes=(1,), per_class=1)
    odd = pattern(1, 45, 38)[0]
    Image.fromarray(odd).save(tmp_path / "gtsrb" / "GTSRB" / "Training" / "00001" / "x.ppm")
    ds = load_dataset("gtsrb", data_root=tmp_path)
    assert ds.train.images.shape == (2, 3, 32, 32) and ds.train.labels.tolist() == [1, 1]
    big = load_dataset("gtsrb", data_root=tmp_path, size=48)
    assert big.test.images.shape == (3, 3, 48, 48)


def test_gtsrb_bad_class_folder_is_named(tmp_path):
    write_gtsrb(tmp_path, classes=(0,), per_class=1)
    bad = tmp_path / "gtsrb" / "GTSRB" / "Training" / "stop-signs"
    bad.mkdir()
    Image.fromarray(pattern(1, 32, 32)[0]).save(bad / "a.ppm")
    with pytest.raises(ValueError, match="stop-signs"):
        load_dataset("gtsrb", data_root=tmp_path)


# -- MNIST / Fashion-MNIST IDX --
def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_exact_pixels_and_labels(tmp_path, gz):
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    expected = {}
    for stem, split, n in (("train", "train", 4), ("t10k", "test", 2)):
        images = pattern(n, 28, 28, offset=n)[..., 0]  # grey (N, 28, 28)
        labels = np.array([(3 * j + 1) % 10 for j in range(n)], np.uint8)
        write_idx(folder / f"{stem}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels, gz)
        expected[split] = images[..., None], labels.tolist()
    ds = load_dataset("fashion-mnist", data_root=tmp_path)
    for split in ("train", "test"):
        images, labels = expected[split]
        assert_images(getattr(ds, split).images, images)
        assert getattr(ds, split).labels.tolist() == labels


# -- image folders --
def test_image_folder_exact_pixels_classes_and_modes(tmp_path):
    """train/ and val/ class folders; PNG is lossless; grey and RGBA files come back as RGB."""
    rgb = pattern(2, 8, 8)
    for split in ("train", "val"):
        (tmp_path / split / "b_dog").mkdir(parents=True)
        (tmp_path / split / "a_cat").mkdir(parents=True)
        Image.fromarray(rgb[0]).save(tmp_path / split / "a_cat" / "0.png")
        Image.fromarray(rgb[1]).convert("RGBA").save(tmp_path / split / "b_dog" / "0.png")
    Image.fromarray(rgb[0][..., 1]).save(tmp_path / "train" / "b_dog" / "1.png")  # grey
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.class_names == ["a_cat", "b_dog"] and ds.num_classes == 2
    grey = np.repeat(rgb[0][..., 1:2], 3, axis=2)
    assert_images(ds.train.images, np.stack([rgb[0], rgb[1], grey]))
    assert ds.train.labels.tolist() == [0, 1, 1]
    assert_images(ds.test.images, rgb)
    assert ds.test.labels.tolist() == [0, 1]
