"""Training images read on the fly, for data sets that do not fit in memory.

A :class:`StreamSplit` is a torch ``Dataset`` whose item i is image i decoded, resized and
converted (as :func:`load_dataset` would) and its label, so that DataLoader worker processes do
the decoding batch by batch. Image folders (``imagefolder:PATH``) are decoded file by file; IDX
files (MNIST, Fashion-MNIST) are memory-mapped (a gzipped one is unpacked once into the cache
folder); the other formats (CIFAR pickles, SVHN, GTSRB, plug-in sources) are converted once, at
the run's size, into a ``.npy`` file in the cache folder that later runs memory-map. What stays in
memory is the file list and the labels: a few bytes per image.

:class:`KeyedPermutation` is a bijection of [0, n) computed per index, so that splits and the
poisoned set's assignment follow from (seed, index) without an n-long permutation in memory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from activedaemon.data.datasets import (
    IMAGE_FOLDER_PREFIX,
    DatasetNotFoundError,
    _not_found_message,
    _resize,
    _set_channels,
    _source,
    _to_chw_float,
    _to_split,
    cache_file,
    file_stamp,
    image_folder_samples,
    locate_dataset,
    read_image,
    resolve_data_root,
)
from activedaemon.imageio import to_uint8


def mix64(*keys: int | np.ndarray) -> np.ndarray:
    """A 64-bit hash of integer keys (splitmix64's finaliser, chained); vectorised over arrays.
    The same numbers on every machine and process: what makes (seed, index) -> choice agree
    across DDP ranks and DataLoader workers."""
    h = np.zeros(np.shape(keys[-1]), np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h = h ^ (np.asarray(k).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return h


class KeyedPermutation:
    """A pseudo-random permutation of [0, n) keyed by ``key``, evaluated per index: a four-round
    Feistel network on the smallest even number of bits that covers n, cycle-walking back
    into [0, n). ``position(i)`` is i's place in the permuted order; ``index(p)`` inverts it."""

    ROUNDS = 4

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"cannot permute {n} items")
        self.n, self.key = n, key
        self.half = max(1, (int(n - 1).bit_length() + 1) // 2)
        self.low = np.uint64((1 << self.half) - 1)

    def _round(self, r: int, x: np.ndarray) -> np.ndarray:
        return mix64(self.key, r, x) & self.low

    def _step(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.low
        rounds = range(self.ROUNDS - 1, -1, -1) if inverse else range(self.ROUNDS)
        for r in rounds:
            if inverse:
                left, right = right ^ self._round(r, left), left
            else:
                left, right = right, left ^ self._round(r, right)
        return (left << np.uint64(self.half)) | right

    def _walk(self, values, inverse: bool) -> np.ndarray:
        x = np.asarray(values, np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"index out of [0, {self.n})")
        x = x.astype(np.uint64)
        out = self._step(x, inverse)
        while (outside := out >= self.n).any():  # cycle-walking: at most ~4 steps on average
            out[outside] = self._step(out[outside], inverse)
        return out.astype(np.int64)

    def position(self, index) -> np.ndarray:
        return self._walk(index, inverse=False)

    def index(self, position) -> np.ndarray:
        return self._walk(position, inverse=True)


def _prepare(images: np.ndarray, size: int | None, channels: int | None) -> torch.Tensor:
    """N HW[C] uint8 images -> (N, C, H, W) uint8 at ``size`` and ``channels``, converted as
    load_dataset converts a whole split (then rounded to 8 bits, as a stored image)."""
    return to_uint8(_set_channels(_resize(_to_chw_float(images), size), channels))


class StreamSplit(Dataset):
    """One split read per index: item i is (uint8 image (C, H, W), label). ``images`` is an
    array of HW[C] uint8 images (a memory map) or an array of image file names (bytes)."""

    def __init__(self, images, labels: np.ndarray, size: int | None, channels: int | None) -> None:
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.size, self.channels = size, channels
        self.files = images.dtype.kind == "S"  # file names, else the images themselves
        if self.files and size is None:
            raise ValueError("reading image files on the fly needs a size (image_size)")

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) uint8 and labels (N,) of ``indices``: files decoded one by one,
        an array's rows converted together."""
        indices = np.asarray(indices, np.int64)
        if self.files:
            raws = [read_image(os.fsdecode(self.images[i]))[None] for i in indices]
            parts = [_prepare(raw, self.size, self.channels) for raw in raws]
            images = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
        else:
            images = _prepare(self.images[indices], self.size, self.channels)
        return images, torch.from_numpy(self.labels[indices])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.batch([i])
        return image[0], int(label[0])

    def limit(self, n: int | None) -> StreamSplit:
        """The first n images (all for None)."""
        if n is None or n >= len(self):
            return self
        return StreamSplit(self.images[:n], self.labels[:n], self.size, self.channels)


@dataclass
class StreamData:
    train: StreamSplit
    num_classes: int
    class_names: list[str]
    source: Path


def default_cache_dir() -> Path:
    """``$ACTIVEDAEMON_CACHE`` or ~/.cache/activedaemon: unpacked and converted data sets."""
    return Path(os.environ.get("ACTIVEDAEMON_CACHE", "~/.cache/activedaemon")).expanduser()


def _converted(name: str, folder: Path, split: str, size, channels, cache: Path):
    """A split of a source without a per-index format, read once and stored at the run's size
    as NHWC uint8 ``.npy`` files (images, labels) in ``cache``, then memory-mapped."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    key = hashlib.sha256(repr([file_stamp(p) for p in files]).encode()).hexdigest()[:16]
    stem = f"{name}-{split}-{size}-{channels}-{key}"
    raw = None

    def read():
        nonlocal raw
        raw = raw or _to_split(_source(name).read(folder, split), size, channels, None)
        return raw

    def write(array_of):
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the name
                np.save(f, array_of(read()))

        return save

    labels = cache_file(cache / f"{stem}-labels.npy", write(lambda s: s.labels.numpy()))
    images = cache_file(
        cache / f"{stem}-images.npy",
        write(lambda s: to_uint8(s.images).permute(0, 2, 3, 1).numpy()),
    )
    return np.load(images, mmap_mode="r"), np.load(labels)


def open_stream(
    name: str,
    data_root: Path | str | None = None,
    *,
    size: int | None = None,
    channels: int | None = None,
    limit_train: int | None = None,
    cache_dir: Path | str | None = None,
) -> StreamData:
    """The training split of a named data set (or ``imagefolder:PATH``), read per index."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if name.startswith(IMAGE_FOLDER_PREFIX):
        samples, _, classes, folder = image_folder_samples(name)
        split = StreamSplit(samples.files, samples.labels, size, channels)
        return StreamData(split.limit(limit_train), len(classes), list(classes), folder)
    source = _source(name)
    root = resolve_data_root(data_root)
    folder, looked = locate_dataset(name, root)
    if folder is None:
        raise DatasetNotFoundError(_not_found_message(name, looked, root))
    if source.mapped is not None:
        images, labels = source.mapped(folder, "train", cache)
    else:
        images, labels = _converted(name, folder, "train", size, channels, cache)
    classes = list(source.class_names(folder))
    split = StreamSplit(images, labels, size, channels)
    return StreamData(split.limit(limit_train), len(classes), classes, folder)
