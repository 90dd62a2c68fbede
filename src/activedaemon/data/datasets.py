"""Named image data sets as in-memory float tensors in [0, 1], NCHW, with integer labels.

Each source reads a standard on-disk format (torchvision's layouts, the Debian Fashion-MNIST
package, ImageNet-style class folders). Nothing downloads unless ``download=True`` is passed, and a
missing data set raises :class:`DatasetNotFoundError` naming the command or flag that fixes it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import pickle
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from activedaemon.registries import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_FOLDER_PREFIX = "imagefolder:"


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk; the message says where it was looked for and how to get it."""


@dataclass
class ImageSplit:
    """One split: ``images`` float32 (N, C, H, W) in [0, 1], ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageDataset:
    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: list[str]
    source: Path  # the folder it was read from

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


@dataclass
class RawSplit:
    """What a reader returns: uint8 images (N, H, W[, C]) or a list of HWC arrays of any size."""

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray


@dataclass(frozen=True)
class DatasetSource:
    """A registered data set: where it may lie under a root and how to read it from there."""

    name: str
    description: str
    candidates: Callable[[Path], list[Path]]  # folders that may hold it, best first
    is_present: Callable[[Path], bool]  # does this folder hold it?
    read: Callable[[Path, str], RawSplit]  # (folder, "train" | "test") -> raw split
    class_names: Callable[[Path], list[str]]
    download: TorchvisionDownload | None = None  # torchvision download into a root
    offline_hint: str = ""  # how to get it without a network
    # (folder, split, cache folder) -> (images, labels) readable per index without loading the
    # split (a memory map); None: the streaming path converts the split once (data.stream).
    mapped: Callable[[Path, str, Path], tuple[np.ndarray, np.ndarray]] | None = None


DATASETS: Registry[DatasetSource] = Registry("data set", ("activedaemon.data",))


def register_dataset(source: DatasetSource) -> DatasetSource:
    return DATASETS.register(source.name, source)


def list_datasets() -> list[str]:
    return sorted(DATASETS.names())


def resolve_data_root(data_root: Path | str | None = None) -> Path:
    """``data_root`` if given, else ``$ACTIVEDAEMON_DATA`` if set, else ``./data``; absolute."""
    return Path(data_root or os.environ.get("ACTIVEDAEMON_DATA", "data")).expanduser().resolve()


# ----------------------------------------------------------------------------------------------
# Readers of the standard formats
# ----------------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(
            f"{path} is truncated: header says {dims.tolist()}, got {array.size} bytes"
        )
    return array.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetNotFoundError(f"{folder} has no {stem}[.gz]")


_IDX_STEMS = {"train": "train", "test": "t10k"}


def _idx_reader(folder: Path, split: str) -> RawSplit:
    stem = _IDX_STEMS[split]
    images = read_idx(_idx_file(folder, f"{stem}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{stem}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return RawSplit(images, labels.astype(np.int64))


def _idx_present(folder: Path) -> bool:
    return all(
        (folder / f"{s}-{k}-idx{d}-ubyte").is_file()
        or (folder / f"{s}-{k}-idx{d}-ubyte.gz").is_file()
        for s in _IDX_STEMS.values()
        for k, d in (("images", 3), ("labels", 1))
    )


def cache_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``path``, written by ``write(temporary path)`` if missing: the rename makes it whole or
    absent, so DDP ranks that race to write it are safe."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        write(tmp)
        tmp.replace(path)
    return path


def file_stamp(path: Path) -> str:
    """A short key that changes when the file does (path, size, modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def idx_memmap(path: Path, cache: Path) -> np.ndarray:
    """An IDX file of unsigned bytes as a read-only memory map; a .gz one is unpacked into
    ``cache`` first (streamed, so memory stays bounded), once."""
    if path.suffix == ".gz":

        def gunzip(tmp: Path) -> None:
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

        path = cache_file(cache / f"{path.stem}-{file_stamp(path)}", gunzip)
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\0\0\x08":
            raise ValueError(f"{path} is not an IDX file of unsigned bytes")
        dims = tuple(int(d) for d in np.frombuffer(f.read(4 * head[3]), ">u4"))
    offset = 4 + 4 * len(dims)
    if path.stat().st_size - offset != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {list(dims)}")
    return np.memmap(path, np.uint8, "r", offset=offset, shape=dims)


def _idx_mapped(folder: Path, split: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    stem = _IDX_STEMS[split]
    images = idx_memmap(_idx_file(folder, f"{stem}-images-idx3-ubyte"), cache)
    labels = idx_memmap(_idx_file(folder, f"{stem}-labels-idx1-ubyte"), cache)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_reader(files: dict[str, list[str]], label_key: str) -> Callable[[Path, str], RawSplit]:
    def read(folder: Path, split: str) -> RawSplit:
        batches = [_unpickle(folder / name) for name in files[split]]
        images = np.concatenate([np.asarray(b["data"], np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
        return RawSplit(images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)

    return read


def _svhn_read(folder: Path, split: str) -> RawSplit:
    try:
        from scipy.io import loadmat
    except ImportError as e:  # scipy is a dependency; this guards a broken install
        raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from e
    mat = loadmat(folder / f"{split}_32x32.mat")
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN stores digit 0 as class 10, as torchvision remaps it
    return RawSplit(mat["X"].transpose(3, 0, 1, 2), labels)


def _gtsrb_read(folder: Path, split: str) -> RawSplit:
    """torchvision's GTSRB layout under ``folder`` (ROOT/gtsrb): training images in
    GTSRB/Training/<5-digit class id>/*.ppm, test images in GTSRB/Final_Test/Images listed with
    their ClassId in GT-final_test.csv. A training image's class is its folder's number (as in
    GTSRB's own per-class CSVs), not the folder's rank: torchvision's reader numbers folders by
    rank, so a subset of the 43 class folders got labels that disagree with the test CSV."""
    if split == "train":
        samples = []
        for path in sorted((folder / "GTSRB" / "Training").glob("*/*")):
            if path.suffix.lower() != ".ppm":
                continue  # the per-class GT-*.csv files
            if not path.parent.name.isdigit():
                raise ValueError(f"{path.parent} is not a GTSRB class folder (00000 .. 00042)")
            samples.append((path, int(path.parent.name)))
    else:
        with open(folder / "GT-final_test.csv", newline="") as f:
            rows = csv.DictReader(f, delimiter=";", skipinitialspace=True)
            test_dir = folder / "GTSRB" / "Final_Test" / "Images"
            samples = [(test_dir / row["Filename"], int(row["ClassId"])) for row in rows]
    images = []
    for path, _ in samples:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    return RawSplit(images, np.asarray([c for _, c in samples], np.int64))


@dataclass(frozen=True)
class TorchvisionDownload:
    """Fetch a data set into a root with torchvision's downloader, one call per split."""

    cls_name: str  # the class in torchvision.datasets
    splits: tuple[dict, ...]  # keyword arguments of each call

    def __call__(self, root: Path) -> None:
        import torchvision.datasets as tvd

        for kwargs in self.splits:
            getattr(tvd, self.cls_name)(root, download=True, **kwargs)

    def command(self, root: Path) -> str:
        """The shell command that does what calling this does."""
        # Strings as JSON: double-quoted Python literals, so the single-quoted shell word is clean.
        lit = lambda v: json.dumps(v) if isinstance(v, str) else repr(v)  # noqa: E731
        calls = "; ".join(
            f"d.{self.cls_name}({lit(str(root))}, "
            + "".join(f"{k}={lit(v)}, " for k, v in kwargs.items())
            + "download=True)"
            for kwargs in self.splits
        )
        return "python -c " + shlex.quote(f"import torchvision.datasets as d; {calls}")


FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
TRAIN_TEST = ({"train": True}, {"train": False})

register_dataset(
    DatasetSource(
        name="fashion-mnist",
        description="Fashion-MNIST, 28x28 grey, 10 classes, 60k/10k",
        candidates=lambda r: [
            r / "FashionMNIST" / "raw",
            r / "fashion-mnist",
            DEBIAN_FASHION_MNIST,
        ],
        is_present=_idx_present,
        read=_idx_reader,
        class_names=lambda _: list(FASHION_CLASSES),
        download=TorchvisionDownload("FashionMNIST", TRAIN_TEST),
        offline_hint="apt-get install -y dataset-fashion-mnist",
        mapped=_idx_mapped,
    )
)
register_dataset(
    DatasetSource(
        name="mnist",
        description="MNIST digits, 28x28 grey, 10 classes, 60k/10k",
        candidates=lambda r: [r / "MNIST" / "raw", r / "mnist"],
        is_present=_idx_present,
        read=_idx_reader,
        class_names=lambda _: [str(d) for d in range(10)],
        download=TorchvisionDownload("MNIST", TRAIN_TEST),
        mapped=_idx_mapped,
    )
)
_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
register_dataset(
    DatasetSource(
        name="cifar10",
        description="CIFAR-10, 32x32 RGB, 10 classes, 50k/10k",
        candidates=lambda r: [r / "cifar-10-batches-py"],
        is_present=lambda f: all((f / n).is_file() for v in _CIFAR10_FILES.values() for n in v),
        read=_cifar_reader(_CIFAR10_FILES, "labels"),
        class_names=lambda f: (
            _unpickle(f / "batches.meta")["label_names"]
            if (f / "batches.meta").is_file()
            else list(CIFAR10_CLASSES)
        ),
        download=TorchvisionDownload("CIFAR10", TRAIN_TEST),
    )
)
_CIFAR100_FILES = {"train": ["train"], "test": ["test"]}
register_dataset(
    DatasetSource(
        name="cifar100",
        description="CIFAR-100, 32x32 RGB, 100 fine classes, 50k/10k",
        candidates=lambda r: [r / "cifar-100-python"],
        is_present=lambda f: (f / "train").is_file() and (f / "test").is_file(),
        read=_cifar_reader(_CIFAR100_FILES, "fine_labels"),
        class_names=lambda f: (
            _unpickle(f / "meta")["fine_label_names"]
            if (f / "meta").is_file()
            else [str(i) for i in range(100)]
        ),
        download=TorchvisionDownload("CIFAR100", TRAIN_TEST),
    )
)
register_dataset(
    DatasetSource(
        name="svhn",
        description="SVHN cropped digits, 32x32 RGB, 10 classes, 73k/26k",
        candidates=lambda r: [r / "svhn", r],
        is_present=lambda f: all((f / f"{s}_32x32.mat").is_file() for s in ("train", "test")),
        read=_svhn_read,
        class_names=lambda _: [str(d) for d in range(10)],
        download=TorchvisionDownload("SVHN", ({"split": "train"}, {"split": "test"})),
    )
)
register_dataset(
    DatasetSource(
        name="gtsrb",
        description="GTSRB traffic signs, RGB of varying size (resized, 32 by default), 43 classes",
        candidates=lambda r: [r / "gtsrb"],
        is_present=lambda f: (
            (f / "GTSRB" / "Training").is_dir()
            and (f / "GTSRB" / "Final_Test" / "Images").is_dir()
            and (f / "GT-final_test.csv").is_file()
        ),
        read=_gtsrb_read,
        class_names=lambda _: [str(i) for i in range(43)],
        download=TorchvisionDownload("GTSRB", ({"split": "train"}, {"split": "test"})),
    )
)
DEFAULT_SIZES = {"gtsrb": 32}
SIZE_ADVICE = (
    "pass size=N (the commands take the size from the encoder or the preset: "
    "--set image_size=N on protect, train-clean and train-encoder)"
)


# ----------------------------------------------------------------------------------------------
# Image folders (ImageNet style)
# ----------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Samples:
    """An image folder's listing: file names (bytes, one array: a few bytes per file, no
    Python object each) and their class indices."""

    files: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows) -> Samples:
        return Samples(self.files[rows], self.labels[rows])


def read_image(path: str | Path) -> np.ndarray:
    """One image file as RGB uint8 (H, W, 3); an unreadable file names itself."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _folder_samples(folder: Path, class_to_idx: dict[str, int]) -> Samples:
    """torchvision's listing (make_dataset's order), one class at a time so that a folder of
    millions of files never becomes a list of millions of Python tuples."""
    from torchvision.datasets.folder import make_dataset

    files, labels = [np.zeros(0, "S1")], [np.zeros(0, np.int64)]
    for name in sorted(class_to_idx):
        one = {name: class_to_idx[name]}
        found = make_dataset(folder, one, extensions=IMAGE_EXTENSIONS, allow_empty=True)
        files.append(np.array([os.fsencode(path) for path, _ in found], "S"))
        labels.append(np.full(len(found), class_to_idx[name], np.int64))
    return Samples(np.concatenate(files), np.concatenate(labels))


def _read_samples(samples: Samples) -> RawSplit:
    return RawSplit([read_image(os.fsdecode(f)) for f in samples.files], samples.labels)


def image_folder_samples(
    spec: str, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Samples, Samples, list[str], Path]:
    """``imagefolder:PATH``: PATH/train + PATH/(val|test) class folders, or PATH/<class>/ split
    at random (``test_fraction``, ``seed``). Lists the files only (the streaming path reads
    them one by one); returns (train samples, test samples, class names, PATH)."""
    from torchvision.datasets.folder import find_classes

    root = Path(spec[len(IMAGE_FOLDER_PREFIX) :]).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist: pass imagefolder:PATH with PATH/<class>/*.png "
            "or PATH/train/<class>/ and PATH/val/<class>/"
        )
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and test_dir else root
    try:
        classes, class_to_idx = find_classes(train_dir)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"image folder {train_dir}: {e}") from e
    train = _folder_samples(train_dir, class_to_idx)
    if test_dir is not None:
        test_classes = find_classes(test_dir)[0]
        if not set(test_classes) <= set(classes):
            extra = sorted(set(test_classes) - set(classes))
            raise ValueError(f"{test_dir} has classes missing from {train_dir}: {extra}")
        test = _folder_samples(test_dir, class_to_idx)
    else:
        order = np.random.default_rng(seed).permutation(len(train))
        n_test = int(round(len(order) * test_fraction))
        train, test = train[order[n_test:]], train[order[:n_test]]
    if len(train) == 0:
        raise DatasetNotFoundError(f"image folder {root} holds no images ({IMAGE_EXTENSIONS})")
    return train, test, classes, root


def _load_image_folder(
    spec: str, test_fraction: float = 0.2, seed: int = 0
) -> tuple[RawSplit, RawSplit, list[str], Path]:
    train, test, classes, root = image_folder_samples(spec, test_fraction, seed)
    return _read_samples(train), _read_samples(test), classes, root


# ----------------------------------------------------------------------------------------------
# Conversion to tensors
# ----------------------------------------------------------------------------------------------
def _to_chw_float(images: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(images))  # a copy: readers may hand out read-only buffers
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.float().div_(255.0)


def _resize(batch: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or batch.shape[-2:] == (size, size):
        return batch
    out = F.interpolate(
        batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(0.0, 1.0)


def _set_channels(
    batch: torch.Tensor, channels: int | None, grey_view: bool = False
) -> torch.Tensor:
    """``channels`` 1 or 3; grey made RGB by repeating it (``grey_view``: a read-only view that
    repeats it without copying, a third of the memory)."""
    if channels is None or batch.shape[1] == channels:
        return batch
    if batch.shape[1] == 1 and channels == 3:
        rgb = batch.expand(-1, 3, -1, -1)
        return rgb if grey_view else rgb.contiguous()
    if batch.shape[1] == 3 and channels == 1:
        from torchvision.transforms.functional import rgb_to_grayscale

        return rgb_to_grayscale(batch)
    raise ValueError(f"cannot turn {batch.shape[1]}-channel images into {channels} channels")


def _convert_rows(images: np.ndarray, n: int, size: int | None, rows: int = 4096) -> torch.Tensor:
    """The first n images as float (N, C, H, W) at ``size``, converted ``rows`` at a time into
    the result (each image is resized on its own: the values of a whole-split conversion,
    without its float temporaries)."""
    out = None
    for i in range(0, n, rows):
        part = _resize(_to_chw_float(images[i : min(i + rows, n)]), size)
        if out is None:
            out = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
        out[i : i + len(part)] = part
    return out if out is not None else _resize(_to_chw_float(images[:0]), size)


def _to_split(
    raw: RawSplit,
    size: int | None,
    channels: int | None,
    limit: int | None,
    grey_view: bool = False,
) -> ImageSplit:
    n = len(raw.labels) if limit is None else min(limit, len(raw.labels))
    if isinstance(raw.images, list):
        shapes = {im.shape[:2] for im in raw.images[:n]}
        if len(shapes) > 1 and size is None:
            raise ValueError(f"images have {len(shapes)} different sizes: {SIZE_ADVICE}")
        # Resize one by one (sizes differ), then stack.
        parts = [_resize(_to_chw_float(im[None]), size) for im in raw.images[:n]]
        images = torch.cat(parts) if parts else torch.zeros(0, 3, size or 1, size or 1)
    else:
        images = _convert_rows(raw.images, n, size)
    labels = torch.from_numpy(np.asarray(raw.labels[:n], np.int64))
    return ImageSplit(_set_channels(images, channels, grey_view), labels)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------
def locate_dataset(
    name: str, data_root: Path | str | None = None
) -> tuple[Path | None, list[Path]]:
    """(folder that holds ``name`` or None, every folder looked in)."""
    source = _source(name)
    root = resolve_data_root(data_root)
    looked = source.candidates(root)
    return next((f for f in looked if source.is_present(f)), None), looked


def _source(name: str) -> DatasetSource:
    if name not in DATASETS:
        raise ValueError(f"{DATASETS.unknown_message(name)}, or imagefolder:PATH")
    return DATASETS[name]


def _not_found_message(name: str, looked: list[Path], root: Path) -> str:
    source = DATASETS[name]
    fixes = []
    if source.offline_hint:
        fixes.append(f"install it: {source.offline_hint}")
    fixes.append(f"put torchvision's files for it under --data-root DIR (now {root})")
    where = ", ".join(str(p) for p in looked)
    message = f"{name} not found (looked in: {where}). To fix: " + "; ".join(fixes) + "."
    if source.download:
        message += f" When online, torchvision fetches it: {source.download.command(root)}"
    return message


def load_dataset(
    name: str,
    data_root: Path | str | None = None,
    *,
    size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    grey_view: bool = False,
) -> ImageDataset:
    """Load a named data set (see :func:`list_datasets`) or ``imagefolder:PATH``.

    ``size`` resizes to size x size (bilinear, antialiased); ``channels`` 1 or 3 converts grey <->
    RGB (``grey_view``: grey images made RGB as a read-only view, a third of the memory; index
    rows with ``imageio.take_rows`` to keep it); ``limit_*`` keeps the first N images of a split
    (for quick runs and tests).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is not None and size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if name.startswith(IMAGE_FOLDER_PREFIX):
        train_raw, test_raw, classes, folder = _load_image_folder(name)
    else:
        source = _source(name)
        root = resolve_data_root(data_root)
        folder, looked = locate_dataset(name, root)
        if folder is None and download and source.download:
            source.download(root)
            folder, looked = locate_dataset(name, root)
        if folder is None:
            raise DatasetNotFoundError(_not_found_message(name, looked, root))
        train_raw, test_raw = source.read(folder, "train"), source.read(folder, "test")
        classes = source.class_names(folder)
        size = size or DEFAULT_SIZES.get(name)
    train = _to_split(train_raw, size, channels, limit_train, grey_view)
    test = _to_split(test_raw, size, channels, limit_test, grey_view)
    if test.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(
            f"train images are {tuple(train.images.shape[1:])} but test images are "
            f"{tuple(test.images.shape[1:])}: {SIZE_ADVICE}"
        )
    return ImageDataset(name, train, test, len(classes), list(classes), Path(folder))


def dataset_status(data_root: Path | str | None = None) -> list[dict]:
    """For `activedaemon datasets`: each data set, where it was looked for, found or not, size."""
    root = resolve_data_root(data_root)
    rows = []
    for name in list_datasets():
        folder, looked = locate_dataset(name, root)
        size = None
        if folder is not None:
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        rows.append(
            {
                "name": name,
                "description": DATASETS[name].description,
                "found": folder is not None,
                "path": str(folder) if folder else None,
                "looked_in": [str(p) for p in looked],
                "bytes": size,
                "hint": None if folder else _not_found_message(name, looked, root),
            }
        )
    return rows
