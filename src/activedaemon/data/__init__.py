"""On-disk image data sets (the poisoned training set of Algorithm 2 is built in protect)."""

from activedaemon.data.datasets import (
    DATASETS,
    DatasetNotFoundError,
    ImageDataset,
    ImageSplit,
    dataset_status,
    list_datasets,
    load_dataset,
    locate_dataset,
)

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageSplit",
    "dataset_status",
    "list_datasets",
    "load_dataset",
    "locate_dataset",
]

from activedaemon.registries import import_submodules  # noqa: E402

import_submodules(__name__)  # a new module dropped into this folder registers itself
