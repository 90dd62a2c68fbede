"""On-disk data sets (and, later, the poisoned data set of Algorithm 2)."""

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
