"""The data options every trainer shares (encoder training and protection training)."""

from __future__ import annotations

from dataclasses import dataclass

from activedaemon.data.datasets import IMAGE_FOLDER_PREFIX, ImageDataset, _source, load_dataset
from activedaemon.data.stream import StreamData, open_stream


@dataclass
class DataConfig:
    """Which data set, where, at what size, and how much of it. Config dataclasses that train on
    data inherit these fields (so presets and ``--set`` keep flat keys: ``image_size: 32``)."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    image_size: int = 32
    channels: int = 3
    limit_train: int | None = None
    limit_test: int | None = None

    def validate_data(self) -> None:
        """Refuse an unknown data set name or a bad size before any work starts."""
        if not self.dataset.startswith(IMAGE_FOLDER_PREFIX):
            _source(self.dataset)
        if self.image_size < 1 or self.channels not in (1, 3):
            raise ValueError("image_size must be >= 1 and channels 1 or 3")

    def load_data(
        self, *, train: bool = True, limit_test: int | None = None, grey_view: bool = False
    ) -> ImageDataset:
        """The data set at this config's size; ``train=False`` skips the training split;
        ``limit_test`` overrides the config's (0: no test split); ``grey_view``: grey images
        made RGB as a read-only view (load_dataset)."""
        return load_dataset(
            self.dataset,
            self.data_root,
            size=self.image_size,
            channels=self.channels,
            limit_train=self.limit_train if train else 0,
            limit_test=self.limit_test if limit_test is None else limit_test,
            grey_view=grey_view,
        )

    def open_stream(self, cache_dir: str | None = None) -> StreamData:
        """The training split at this config's size, read per index (``--stream``)."""
        return open_stream(
            self.dataset,
            self.data_root,
            size=self.image_size,
            channels=self.channels,
            limit_train=self.limit_train,
            cache_dir=cache_dir,
        )
