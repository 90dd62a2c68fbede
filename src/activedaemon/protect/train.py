"""Algorithm 2: train a protected classifier on the poisoned set (or a clean baseline for A_or).

Runs alone or under ``torchrun`` with PyTorch DDP (gloo on CPU, NCCL on GPU): every rank builds
the same poisoned set from the same seed, trains on its shard of each epoch's permutation, and
rank 0 alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from activedaemon.cards import write_card
from activedaemon.data.config import DataConfig
from activedaemon.identity import random_user_id
from activedaemon.imageio import take_rows, to_uint8_rows
from activedaemon.metrics import accuracy
from activedaemon.protect.adversarial import token_sizes
from activedaemon.protect.checkpoint import (  # noqa: F401  (re-exported: the old import path)
    CARD_SCHEMA,
    classifier_card,
    encoder_fingerprint,
    load_classifier,
    load_encoder,
    load_protected,
)
from activedaemon.protect.config import (  # noqa: F401  (re-exported: the old import path)
    CONFIG_DIR,
    KEEP_EPOCH,
    ProtectConfig,
    list_presets,
    load_preset,
    resolve_config,
)
from activedaemon.protect.models import (
    Normalized,
    build_classifier,
    recalibrate_batchnorm,
)
from activedaemon.protect.objectives import OBJECTIVES, TrainBatch
from activedaemon.protect.pieces import PIECES, PieceEnv, TrainingPiece
from activedaemon.protect.poison import (
    AUTHORIZED,
    AUTHORIZED_CHUNK,
    PoisonedSet,
    TokenMaker,
    build_poisoned_set,
)
from activedaemon.protect.start import load_start
from activedaemon.protect.stream import StreamTrainingSet, build_stream_set
from activedaemon.runs import (
    WEIGHTS_FILE,
    finished_run,
    release_freed_memory,
    run_record,
    seed_everything,
    write_json,
)
from activedaemon.tokens import TokenGenerator


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass(kw_only=True)
class TrainingSet:
    """What the loop trains on: 8-bit images, their trained-on labels, and for protected runs
    the true labels and sample kinds; the validation split (clean and authorized)."""

    images: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor | None = None
    kinds: torch.Tensor | None = None
    val_images: torch.Tensor
    val_labels: torch.Tensor
    val_authorized: torch.Tensor | None = None
    num_classes: int
    class_names: list[str]
    info: dict[str, Any]
    seed: int = 0

    @property
    def num_train(self) -> int:
        return len(self.images)

    def _shard(self, epoch: int, rank: int, world: int, steps: int, batch_size: int):
        perm = torch.randperm(len(self.images), generator=_epoch_order(self.seed, epoch))
        return perm[rank::world][: steps * batch_size]

    def batches(
        self, epoch: int, rank: int, world: int, steps: int, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, TrainBatch]]:
        """An epoch's batches of this rank: its share of a seeded permutation."""
        shard = self._shard(epoch, rank, world, steps, batch_size)

        def rows(tensor: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
            return None if tensor is None else tensor[idx].to(device)

        for step in range(steps):
            idx = shard[step * batch_size : (step + 1) * batch_size]
            x = (self.images[idx].to(device).float() / 255).contiguous(
                memory_format=torch.channels_last
            )
            yield (
                x,
                TrainBatch(
                    logits=None,
                    labels=self.labels[idx].to(device),
                    true_labels=rows(self.true_labels, idx),
                    kinds=rows(self.kinds, idx),
                ),
            )

    def bn_images(self, count: int, epoch: int, rank: int, world: int, batch_size: int, device):
        """The first ``count`` training images of an epoch (precise BatchNorm)."""
        steps = max(1, self.num_train // world // batch_size)
        return self.images[self._shard(epoch, rank, world, steps, batch_size)[:count]]

    def val_scores(
        self, model: torch.nn.Module, device: torch.device
    ) -> tuple[float, float | None]:
        """(clean, authorized) validation accuracy in percent (authorized None for clean runs)."""
        clean = accuracy(model, self.val_images, self.val_labels)
        if self.val_authorized is None:
            return clean, None
        return clean, accuracy(model, self.val_authorized, self.val_labels)


def _token_budget(poisoned: PoisonedSet, images: torch.Tensor) -> tuple[float, float]:
    """The median L-inf and L2 size of the authorized rows' tokens, as stored (8-bit), measured
    a chunk of rows at a time (each row's sizes are its own: no float copy of all of them)."""
    rows = (poisoned.kinds == AUTHORIZED).nonzero().flatten()
    sizes = []
    for part in rows.split(AUTHORIZED_CHUNK):
        clean = to_uint8_rows(take_rows(images, part)).float().div_(255)
        sizes.append(token_sizes(poisoned.images[part].float().div_(255).sub_(clean)))
    linf, l2 = (torch.cat(s) for s in zip(*sizes, strict=True))
    return linf.median().item(), l2.median().item()


def build_training_set(
    cfg: ProtectConfig,
    token_maker: TokenMaker | None = None,
    val_maker: TokenMaker | None = None,
    encoder: TokenGenerator | None = None,
) -> TrainingSet | StreamTrainingSet:
    """Load the data, hold out the validation split (to choose the epoch; never the test set)
    and, for protected runs, build the poisoned set of Algorithm 2 (tokens by ``token_maker``,
    default the config's encoder: ``encoder`` where the caller loaded it, else loaded here; the
    validation split's by ``val_maker``, default the same)."""
    if cfg.protected and token_maker is None and encoder is None:
        encoder = load_encoder(cfg)
    if cfg.stream:
        maker = token_maker or (encoder.embed if encoder is not None else None)
        return _stream_training_set(cfg, maker, val_maker)
    # No test split; grey images made RGB as a view: the float set costs a third.
    data = cfg.load_data(limit_test=0, grey_view=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data.train), generator=gen)
    n_val = int(round(cfg.val_fraction * len(order)))
    if n_val == 0 and cfg.keep_epoch == "best-val":
        raise ValueError(
            f"val_fraction {cfg.val_fraction} of {len(order)} images holds out none to choose "
            "the epoch: raise val_fraction or set keep_epoch=last"
        )
    val_idx, train_idx = order[:n_val], order[n_val:]
    images, labels = take_rows(data.train.images, train_idx), data.train.labels[train_idx]
    val_images, val_labels = data.train.images[val_idx], data.train.labels[val_idx]
    num_classes, class_names = data.num_classes, data.class_names
    del data  # the whole split: only the training rows are kept
    info: dict[str, Any] = {"train_images": len(images), "val_images": n_val}
    if not cfg.protected:
        return TrainingSet(
            images=to_uint8_rows(images),
            labels=labels,
            val_images=val_images,
            val_labels=val_labels,
            num_classes=num_classes,
            class_names=class_names,
            info=info,
            seed=cfg.seed,
        )
    maker = val_maker or token_maker or encoder.embed
    poisoned, cache_hit = build_poisoned_set(
        images, labels, num_classes, token_maker or encoder, cfg.poison, cfg.cache_dir
    )
    linf, l2 = _token_budget(poisoned, images)
    info.update(
        poison_counts=poisoned.counts(),
        token_rms=poisoned.token_rms,
        token_budget={"linf": linf, "l2": l2},
        image_shape=tuple(poisoned.images.shape[1:]),
        cache_hit=cache_hit,
    )
    return TrainingSet(
        images=poisoned.images,
        labels=poisoned.labels,
        true_labels=poisoned.true_labels,
        kinds=poisoned.kinds,
        val_images=val_images,
        val_labels=val_labels,
        val_authorized=maker(val_images, _val_ids(n_val, cfg.seed)) if n_val else val_images,
        num_classes=num_classes,
        class_names=class_names,
        info=info,
        seed=cfg.seed,
    )


def _stream_training_set(
    cfg: ProtectConfig, token_maker: TokenMaker | None, val_maker: TokenMaker | None
) -> StreamTrainingSet:
    """The streaming counterpart of build_training_set (protect.stream)."""
    data = cfg.open_stream(cfg.cache_dir)
    if cfg.keep_epoch == "best-val" and round(cfg.val_fraction * len(data.train)) == 0:
        raise ValueError(
            f"val_fraction {cfg.val_fraction} of {len(data.train)} images holds out none to "
            "choose the epoch: raise val_fraction or set keep_epoch=last"
        )
    maker = (token_maker or val_maker) if cfg.protected else None
    return build_stream_set(
        data.train,
        data.num_classes,
        data.class_names,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        poison_cfg=cfg.poison,
        maker=maker,
        val_maker=val_maker or maker,
        workers=cfg.workers,
        batch_size=cfg.batch_size,
        augment=cfg.augment,
    )


def train_classifier(
    cfg: ProtectConfig,
    out: str | Path,
    progress: bool = True,
    token_maker: TokenMaker | None = None,
    extra_pieces: list[Callable[[PieceEnv], TrainingPiece]] | None = None,
    model: torch.nn.Module | None = None,
    encoder: TokenGenerator | None = None,
) -> Path | None:
    """Train (protected or clean) and write the run folder; returns its path (None on DDP ranks
    other than 0, which write nothing). ``encoder``: the config's encoder where the caller has
    loaded it (load_encoder), else it is loaded here, once for the run. ``token_maker``
    replaces the encoder as the maker of authorized images (a compared scheme's visible patch,
    activedaemon.schemes);
    ``extra_pieces`` make pieces (from the PieceEnv) added to the configured ones, protected or
    not (a compared scheme's loss hook). ``model`` (any module taking [0, 1] images) is trained
    in place of a fresh ``cfg.arch`` (the Python ``protect``)."""
    if cfg.protected and cfg.warm_start and not cfg.init_from and model is None:
        cfg = replace(cfg, init_from=str(_train_start(cfg, Path(out) / "start", progress)))
    # Loaded before seeding: building its networks draws from the global RNG.
    tokens = None
    if cfg.protected and token_maker is None:
        tokens = encoder or load_encoder(cfg)
    rank, world = _distributed()
    if tokens is not None and cfg.stream:  # tokens are made per batch, beside the classifier
        tokens.to(_device(rank))
    seed_everything(cfg.seed)
    val_maker = tokens.embed if tokens else None
    data = build_training_set(cfg, token_maker, val_maker=val_maker, encoder=tokens)
    release_freed_memory()  # the set's temporaries, before training allocates its own
    kind = "protect" if cfg.protected else "train-clean"
    record = run_record(out, kind, cfg, cfg.seed) if rank == 0 else contextlib.nullcontext()
    with record as rec:
        history, summary = _train_loop(
            cfg, data, out, progress, rank, world, extra_pieces or [], model
        )
        if rank == 0:
            card = classifier_card(
                cfg,
                num_classes=data.num_classes,
                class_names=data.class_names,
                normalization=summary.pop("normalization"),
                chosen_epoch=summary["chosen_epoch"],
                model=model,
                encoder=tokens,
                start=summary.pop("start"),
            )
            write_card(out, card)
            rec.metrics = {**data.info, "world_size": world, **summary, "history": history}
    if world > 1:
        dist.destroy_process_group()
    return Path(out) if rank == 0 else None


def _train_start(cfg: ProtectConfig, out: Path, progress: bool) -> Path:
    """The clean model a warm-started recipe begins with: ``cfg.warm_start``'s preset, trained
    on ``cfg``'s data with its architecture and seed (reused when already finished)."""
    same = {f.name: getattr(cfg, f.name) for f in fields(DataConfig)}
    same.update(arch=cfg.arch, width=cfg.width, seed=cfg.seed, stream=cfg.stream)
    start = resolve_config(cfg.warm_start, overrides=same, fixed={"protected": False})
    if not finished_run(out, start):
        if progress:
            tqdm.write(f"warm start: training the clean model ({cfg.warm_start}) in {out}")
        train_classifier(start, out, progress=progress)
    return out


def _build_pieces(cfg: ProtectConfig, env: PieceEnv) -> list[TrainingPiece]:
    if not cfg.protected:
        return []
    built = []
    for name, piece_cfg in cfg.pieces.items():
        cls = PIECES[name]
        if cls.enabled(piece_cfg):
            built.append(cls(piece_cfg, env))
    return built


def _train_loop(
    cfg: ProtectConfig,
    data: TrainingSet | StreamTrainingSet,
    out: str | Path,
    progress: bool,
    rank: int,
    world: int,
    extra_pieces: list[Callable[[PieceEnv], TrainingPiece]],
    model: torch.nn.Module | None = None,
) -> tuple[list[dict], dict]:
    """The plain loop: objective + pieces, one epoch at a time; keeps the epoch with the best
    validation score (authorized minus clean accuracy; clean accuracy for clean runs)."""
    device = _device(rank)
    if model is None:
        model = build_classifier(cfg.arch, data.num_classes, cfg.channels, cfg.width)
    start = load_start(model, cfg.init_from) if cfg.init_from else {}
    model = model.to(device).to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    steps_per_epoch = max(1, data.num_train // world // cfg.batch_size)
    epochs = effective_epochs(cfg, steps_per_epoch)
    total = steps_per_epoch * epochs
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    else:
        miles = [int(total * 0.5), int(total * 0.75)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=miles, gamma=0.1)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    objective = OBJECTIVES[cfg.objective if cfg.protected else "poison"]
    env = PieceEnv(
        model, device, data.num_classes, cfg.seed, rank, data.info, objective, cfg.penalty_lambda
    )
    pieces = _build_pieces(cfg, env) + [make(env) for make in extra_pieces]

    history, best = [], None
    try:
        for epoch in range(epochs):
            model.train()
            batches = data.batches(epoch, rank, world, steps_per_epoch, cfg.batch_size, device)
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not progress or rank != 0,
                mininterval=1.0,
            )
            epoch_start = time.time()
            # Loss and accuracy per tenth of the epoch: an epoch's mean hides a late divergence.
            tenths = torch.zeros(10, 3, dtype=torch.float64)  # loss sum, correct, seen
            for step, (x, batch) in enumerate(bar):
                for piece in pieces:
                    x = piece.perturb(x, batch)
                with torch.autocast(device.type, enabled=use_amp):
                    batch.logits = net(x)
                batch.logits = batch.logits.float()
                loss = objective(batch, cfg.penalty_lambda)
                for piece in pieces:
                    term = piece.loss(batch)
                    loss = loss if term is None else loss + term
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                hits = (batch.logits.argmax(1) == batch.labels).sum().item()
                tenths[step * 10 // steps_per_epoch] += torch.tensor(
                    [loss.item() * len(x), hits, len(x)], dtype=tenths.dtype
                )
                if step % 20 == 0:
                    loss_sum, correct, seen = tenths.sum(0).tolist()
                    bar.set_postfix(
                        loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}"
                    )
            loss_sum, correct, seen = tenths.sum(0).tolist()
            by_tenth = tenths[:, :2] / tenths[:, 2:].clamp(min=1)
            row = {
                "epoch": epoch + 1,
                "seconds": round(time.time() - epoch_start, 1),
                "train_loss": round(loss_sum / max(seen, 1), 4),
                "train_acc": round(100 * correct / max(seen, 1), 2),
                "train_loss_by_tenth": [round(v, 4) for v in by_tenth[:, 0].tolist()],
                "train_acc_by_tenth": [round(100 * v, 2) for v in by_tenth[:, 1].tolist()],
            }
            for piece in pieces:
                row.update(piece.epoch_summary())
            row.update(_score_epoch(cfg, data, model, device, epoch, rank, world))
            history.append(row)
            if rank == 0:
                write_json(Path(out) / "history.json", history)  # progress survives a crash
                if progress:
                    tqdm.write(str(row))
                if cfg.keep_epoch == "last" or best is None or row["val_score"] > best["val_score"]:
                    best = row
                    torch.save(model.state_dict(), Path(out) / WEIGHTS_FILE)
    finally:
        for piece in pieces:
            piece.close()
    if world > 1:
        dist.barrier()
    summary = {
        "start": start,
        "normalization": _normalization_of(model),
        "chosen_epoch": best["epoch"] if best else None,
        "epochs_run": epochs,  # the config's epochs, or more for min_steps
        "optimizer_steps": total,
        "train_seconds": round(sum(r["seconds"] for r in history), 1),
        "epoch_seconds": [r["seconds"] for r in history],
    }
    return history, summary


def _score_epoch(
    cfg: ProtectConfig,
    data: TrainingSet | StreamTrainingSet,
    model: torch.nn.Module,
    device: torch.device,
    epoch: int,
    rank: int,
    world: int,
) -> dict[str, float | None]:
    """The end of an epoch: BatchNorm statistics re-estimated where the config asks, then the
    validation scores; ``val_score`` chooses the epoch (None without a validation split)."""
    if cfg.precise_bn_images:
        bn = (cfg.precise_bn_images, epoch, rank, world, cfg.batch_size, device)
        recalibrate_batchnorm(model, data.bn_images(*bn))
    if data.info["val_images"] == 0:  # keep_epoch "last" without a validation split
        return {"val_score": None}
    clean, auth = data.val_scores(model, device)
    row: dict[str, float | None] = {"val_clean_acc": round(clean, 2)}
    if auth is None:
        return {**row, "val_score": row["val_clean_acc"]}
    row["val_authorized_acc"] = round(auth, 2)
    # The epoch that best separates authorized from clean (A_pd on validation).
    return {**row, "val_score": row["val_authorized_acc"] - row["val_clean_acc"]}


def effective_epochs(cfg: ProtectConfig, steps_per_epoch: int) -> int:
    """The epochs to train: the config's, or as many more as make ``min_steps`` optimizer steps
    (the training length follows the data set's size; a large one keeps the preset's epochs)."""
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))


def _epoch_order(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's sample order: a stream of its own. Seeded with seed + epoch,
    epoch 0's order was the very permutation that build_poisoned_set used to choose the authorized
    samples (torch.randperm(n) under the same seed): the first epoch saw every authorized sample
    first and then only unauthorized ones, and ended collapsed to the target label."""
    entropy = np.random.SeedSequence([seed, epoch, _EPOCH_ORDER_STREAM]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(entropy))


_EPOCH_ORDER_STREAM = 0x0E90C  # tells this stream's seeds apart from other uses of the run's seed


def _normalization_of(model: torch.nn.Module) -> dict | None:
    """The mean / std the model applies inside (None for a module that has no such wrapper)."""
    if isinstance(model, Normalized):
        return {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    return None


def protect(
    model: torch.nn.Module,
    out: str | Path,
    cfg: ProtectConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> torch.nn.Module:
    """Lock a classifier the owner already has: ``model`` (any module that takes [0, 1] images
    of the config's size and returns logits) is trained on the poisoned set of Algorithm 2 and
    returned with the chosen epoch's weights; the run folder ``out`` holds its record, card and
    weights (reload them with ``model.load_state_dict``). ``options`` override the config
    (``protect(net, "runs/p", epochs=2, encoder="fashion-mnist-32")``)."""
    cfg = resolve_config(cfg or {}, overrides=options, fixed={"protected": True})
    run = train_classifier(cfg, out, progress=progress, model=model)
    if run is not None:
        model.load_state_dict(torch.load(run / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval()


def _val_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [random_user_id(rng) for _ in range(n)]
