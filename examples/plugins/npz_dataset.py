"""A new data set in one file: images and labels in two NumPy files.

``ROOT/npz-demo/train.npz`` and ``ROOT/npz-demo/test.npz``, each with ``images`` (uint8, N x H x W
or N x H x W x C) and ``labels`` (integers). Drop this file into ``src/activedaemon/data/`` (or
name its module in ``$ACTIVEDAEMON_PLUGINS``) and ``--dataset npz-demo`` works in every command
(``activedaemon datasets`` lists it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from activedaemon.data.datasets import DatasetSource, RawSplit, register_dataset


def _read(folder: Path, split: str) -> RawSplit:
    with np.load(folder / f"{split}.npz") as f:
        return RawSplit(images=f["images"], labels=f["labels"].astype(np.int64))


def _class_names(folder: Path) -> list[str]:
    with np.load(folder / "train.npz") as f:
        return [str(c) for c in range(int(f["labels"].max()) + 1)]


register_dataset(
    DatasetSource(
        name="npz-demo",
        description="any images in ROOT/npz-demo/{train,test}.npz (arrays images, labels)",
        candidates=lambda root: [root / "npz-demo"],
        is_present=lambda folder: (folder / "train.npz").is_file(),
        read=_read,
        class_names=_class_names,
        offline_hint="write train.npz and test.npz with numpy.savez",
    )
)
