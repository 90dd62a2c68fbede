"""Protection training on data read on the fly (``stream: true``, ``protect --stream``).

Nothing grows with the data set: DataLoader workers read and decode the batch's clean images
(:mod:`activedaemon.data.stream`) and the poisoned set's assignment of each sample (kind, user
id, label; :class:`~activedaemon.protect.poison.PoisonPlan`); the training process makes the
batch's tokens and sample kinds on the training device (:func:`poison_batch`). The held-out
validation split is read the same way. Every DDP rank computes the same plan and
``DistributedSampler`` gives each its share of every epoch's order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from activedaemon.data.stream import KeyedPermutation, StreamSplit, mix64
from activedaemon.identity import random_user_id
from activedaemon.imageio import to_uint8
from activedaemon.protect.adversarial import token_budget
from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.poison import PoisonPlan, TokenMaker, poison_batch
from activedaemon.registries import Registry

_SPLIT_KEY, _VAL_ID_KEY, _BATCH_KEY = 0x57A11, 0x57A12, 0x57A13

# Augmentations of the clean batch on the training device, before its tokens are made (so a
# token is never cropped or flipped): (images, generator on their device) -> images.
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry[Augmentation] = Registry(
    "augmentation", ("activedaemon.protect.registered",)
)


@AUGMENTATIONS.register("flip-crop")
def flip_crop(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The CIFAR recipe: a random horizontal flip and a random crop of the image padded by
    ``pad`` pixels (reflected), per image."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=gen, device=gen.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    return padded[batch, torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]


CALIBRATION_IMAGES = 256  # authorized images that measure the tokens' RMS and budget


class TrainPart(Dataset):
    """Sample j of the training part of ``split``: its clean image, true label and the plan's
    answers. ``__getitems__`` answers a whole batch in a worker (vectorised plan)."""

    def __init__(self, split: StreamSplit, order: KeyedPermutation, n_val: int, plan) -> None:
        self.split, self.order, self.n_val, self.plan = split, order, n_val, plan

    def __len__(self) -> int:
        return len(self.split) - self.n_val

    def global_index(self, js) -> np.ndarray:
        return self.order.index(np.asarray(js) + self.n_val)

    def __getitems__(self, js: list[int]) -> dict[str, Any]:
        js = np.asarray(js)
        images, true = self.split.batch(self.global_index(js))
        batch = {"images": images, "true_labels": true}
        if self.plan is None:
            return batch | {"labels": true}
        kinds = self.plan.kinds(js)
        return batch | {
            "labels": self.plan.labels(js, true, kinds),
            "kinds": torch.from_numpy(kinds),
            "user_ids": self.plan.user_ids(js),
        }

    def __getitem__(self, j: int) -> dict[str, Any]:
        return self.__getitems__([j])


class ValPart(Dataset):
    """Validation image v (held out of training) with a user id of its own for its token."""

    def __init__(self, split: StreamSplit, order: KeyedPermutation, n_val: int, seed: int):
        self.split, self.order, self.n_val, self.seed = split, order, n_val, seed

    def __len__(self) -> int:
        return self.n_val

    def __getitems__(self, vs: list[int]) -> dict[str, Any]:
        images, labels = self.split.batch(self.order.index(np.asarray(vs)))
        keys = mix64(self.seed, _VAL_ID_KEY, np.asarray(vs))
        return {
            "images": images,
            "labels": labels,
            "user_ids": [random_user_id(random.Random(int(k))) for k in keys],
        }

    def __getitem__(self, v: int) -> dict[str, Any]:
        return self.__getitems__([v])


def _as_is(batch):  # the datasets above collate their own batches
    return batch


@dataclass(kw_only=True)
class StreamTrainingSet:
    """What the training loop reads when streaming; the counterpart of ``TrainingSet``."""

    train: TrainPart
    val: ValPart
    maker: TokenMaker | None  # None for clean runs
    val_maker: TokenMaker | None
    token_rms: float
    num_classes: int
    class_names: list[str]
    info: dict[str, Any]
    workers: int
    seed: int
    eval_batch: int = 128  # validation batches: the training batch size, not the split's size
    augment: Augmentation | None = None
    _loaders: dict = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return len(self.train)

    def _loader(self, rank: int, world: int, batch_size: int, device: torch.device):
        key = (rank, world, batch_size)
        if key not in self._loaders:
            sampler = DistributedSampler(
                self.train, world, rank, shuffle=True, seed=self.seed, drop_last=True
            )
            self._loaders[key] = DataLoader(
                self.train,
                batch_size=batch_size,
                sampler=sampler,
                drop_last=True,
                collate_fn=_as_is,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=device.type == "cuda",
            )
        return self._loaders[key]

    def batches(
        self, epoch: int, rank: int, world: int, steps: int, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, TrainBatch]]:
        """An epoch's batches of this rank, poisoned on ``device``."""
        loader = self._loader(rank, world, batch_size, device)
        loader.sampler.set_epoch(epoch)
        # Noise and donors of the sample kinds: per (seed, epoch, rank), on the device.
        key = int(mix64(self.seed, _BATCH_KEY, epoch * world + rank) >> np.uint64(1))
        gen = torch.Generator(device).manual_seed(key)
        rng = random.Random(key)
        pool = self.train.plan.pool if self.train.plan else []

        def draw_ids(k: int) -> list[str]:
            return [rng.choice(pool) if pool else random_user_id(rng) for _ in range(k)]

        for _, b in zip(range(steps), loader, strict=False):
            x = b["images"].to(device, non_blocking=True).float() / 255
            if self.augment is not None:
                x = self.augment(x, gen)
            kinds = b["kinds"].to(device) if "kinds" in b else None
            if self.maker is not None:
                x = poison_batch(x, kinds, b["user_ids"], self.maker, gen, draw_ids, self.token_rms)
            yield (
                x.contiguous(memory_format=torch.channels_last),
                TrainBatch(
                    logits=None,
                    labels=b["labels"].to(device),
                    true_labels=b["true_labels"].to(device) if kinds is not None else None,
                    kinds=kinds,
                ),
            )

    def bn_images(self, count: int, epoch: int, rank: int, world: int, batch_size: int, device):
        """The first ``count`` poisoned training images of an epoch (precise BatchNorm)."""
        steps = -(-count // batch_size)
        parts = [x for x, _ in self.batches(epoch, rank, world, steps, batch_size, device)]
        return torch.cat(parts)[:count]

    @torch.no_grad()
    def val_scores(
        self, model: torch.nn.Module, device: torch.device
    ) -> tuple[float, float | None]:
        """(clean, authorized) validation accuracy in percent (authorized None for clean runs)."""
        model.eval()
        loader = DataLoader(self.val, self.eval_batch, collate_fn=_as_is, num_workers=0)
        clean = auth = 0
        for b in loader:
            x, y = b["images"].to(device).float() / 255, b["labels"].to(device)
            clean += (model(x).argmax(1) == y).sum().item()
            if self.val_maker is not None:
                auth += (model(self.val_maker(x, b["user_ids"])).argmax(1) == y).sum().item()
        n = max(len(self.val), 1)
        return 100.0 * clean / n, (100.0 * auth / n if self.val_maker is not None else None)


def build_stream_set(
    split: StreamSplit,
    num_classes: int,
    class_names: list[str],
    *,
    seed: int,
    val_fraction: float,
    poison_cfg,
    maker: TokenMaker | None,
    val_maker: TokenMaker | None,
    workers: int,
    batch_size: int = 128,
    augment: str = "none",
) -> StreamTrainingSet:
    """Hold out the validation split and plan the poisoned set (``maker`` None: a clean run),
    both by keyed permutations of the indices; measure the tokens on a fixed sample."""
    n_val = int(round(val_fraction * len(split)))
    order = KeyedPermutation(len(split), int(mix64(seed, _SPLIT_KEY)))
    plan = PoisonPlan(len(split) - n_val, num_classes, poison_cfg) if maker else None
    train = TrainPart(split, order, n_val, plan)
    info: dict[str, Any] = {"train_images": len(train), "val_images": n_val, "stream": True}
    token_rms = 0.0
    if plan is not None:
        js = plan.authorized_indices(CALIBRATION_IMAGES)
        b = train.__getitems__(js.tolist())
        clean = b["images"].float() / 255
        tokens = to_uint8(maker(clean, b["user_ids"])).float() / 255 - clean
        token_rms = tokens.pow(2).mean().sqrt().item() if len(js) else 0.0
        linf, l2 = token_budget(tokens)
        info.update(
            poison_counts=plan.counts(),
            token_rms=token_rms,
            token_budget={"linf": linf, "l2": l2},
            token_calibration_images=len(js),
            image_shape=tuple(clean.shape[1:]),
            cache_hit=False,
        )
    return StreamTrainingSet(
        train=train,
        val=ValPart(split, order, n_val, seed),
        maker=maker,
        val_maker=val_maker if maker else None,
        token_rms=token_rms,
        num_classes=num_classes,
        class_names=class_names,
        info=info,
        workers=workers,
        seed=seed,
        eval_batch=batch_size,
        augment=None if augment == "none" else AUGMENTATIONS[augment],
    )
