"""Algorithm 2: train a protected classifier on the poisoned set (or a clean baseline for A_or).

Runs alone or under ``torchrun`` with PyTorch DDP (gloo on CPU, NCCL on GPU): every rank builds
the same poisoned set from the same seed, trains on its shard of each epoch's permutation, and
rank 0 alone writes the run folder.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from tqdm.auto import tqdm

from activedaemon.data import load_dataset
from activedaemon.data.poison import AUTHORIZED, PoisonConfig, TokenMaker, build_poisoned_set
from activedaemon.identity import random_user_id
from activedaemon.imageio import to_uint8
from activedaemon.protect.adversarial import AdversarialConfig, UniversalNegatives, token_budget
from activedaemon.protect.models import StageTap, build_classifier, stage_names
from activedaemon.protect.objectives import (
    OBJECTIVES,
    DormancyConfig,
    TrainBatch,
    dormancy_term,
)
from activedaemon.runs import (
    config_from_dict,
    finish_run,
    seed_everything,
    start_run,
    write_json,
)
from activedaemon.tokens import TokenGenerator

CARD_FILE, WEIGHTS_FILE = "card.yaml", "weights.pt"


@dataclass
class ProtectConfig:
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    image_size: int = 32
    channels: int = 3
    limit_train: int | None = None
    limit_test: int | None = None
    arch: str = "resnet18"
    width: int = 16
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # or "multistep" (x0.1 at 50 % and 75 % of the epochs)
    objective: str = "poison"  # protect.objectives: poison (CE to poisoned labels), penalty
    # (eq. (5) L_a - lambda L_u), uniform (unauthorized samples towards 1/K on every class)
    penalty_lambda: float = 1.0
    val_fraction: float = 0.05  # held out of training to choose the epoch (never the test set)
    encoder: str = "fashion-mnist-32"
    protected: bool = True
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    dormancy: DormancyConfig = field(default_factory=DormancyConfig)
    cache_dir: str | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> ProtectConfig:
        if values.get("objective", "poison") not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}")
        if values.get("schedule", "onecycle") not in ("onecycle", "multistep"):
            raise ValueError("schedule must be 'onecycle' or 'multistep'")
        nested = {
            "poison": PoisonConfig,
            "adversarial": AdversarialConfig,
            "dormancy": DormancyConfig,
        }
        cfg = config_from_dict(cls, values, nested, "protection")
        cfg.adversarial.validate()
        cfg.dormancy.validate()
        return cfg


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> dict:
    """A preset name from ``activedaemon/configs/`` (cpu-small, tiny, gpu-paper-*) or a YAML
    file; returns its option values."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset or config file {name_or_path!r}; presets: {list_presets()}")
    return yaml.safe_load(path.read_text()) or {}


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


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bs: int = 512):
    """Top-1 accuracy in percent; images float [0, 1] or uint8."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), bs):
        x = images[i : i + bs].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        correct += (model(x).argmax(1).cpu() == labels[i : i + bs]).sum().item()
    return 100.0 * correct / max(len(images), 1)


def train_classifier(
    cfg: ProtectConfig,
    out: str | Path,
    progress: bool = True,
    token_maker: TokenMaker | None = None,
) -> Path | None:
    """Train (protected or clean) and write the run folder; returns its path (None on DDP ranks
    other than 0, which write nothing). ``token_maker`` replaces the encoder as the maker of
    authorized images (a compared scheme's visible patch, activedaemon.schemes)."""
    tokens = TokenGenerator.load(cfg.encoder) if cfg.protected and not token_maker else None
    if tokens is not None and (tokens.arch.image_size, tokens.arch.channels) != (
        cfg.image_size,
        cfg.channels,
    ):
        raise ValueError(
            f"encoder {cfg.encoder} works on {tokens.arch.channels}x{tokens.arch.image_size}px "
            f"images; set image_size={tokens.arch.image_size} channels={tokens.arch.channels}"
        )
    rank, world = _distributed()
    device = _device(rank)
    seed_everything(cfg.seed)
    data = load_dataset(
        cfg.dataset,
        cfg.data_root,
        size=cfg.image_size,
        channels=cfg.channels,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
    )
    # Hold out a validation split (clean and authorized) to choose the epoch.
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data.train), generator=gen)
    n_val = int(round(cfg.val_fraction * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    images, labels = data.train.images[train_idx], data.train.labels[train_idx]
    val_images, val_labels = data.train.images[val_idx], data.train.labels[val_idx]

    kinds = true_labels = None
    info: dict = {"train_images": len(images), "val_images": n_val, "world_size": world}
    val_auth = None
    if cfg.protected:
        poisoned, cache_hit = build_poisoned_set(
            images, labels, data.num_classes, token_maker or cfg.encoder, cfg.poison, cfg.cache_dir
        )
        train_u8, train_labels = poisoned.images, poisoned.labels
        kinds, true_labels = poisoned.kinds, poisoned.true_labels
        info.update(
            poison_counts=poisoned.counts(), token_rms=poisoned.token_rms, cache_hit=cache_hit
        )
        val_auth = (token_maker or tokens.embed)(val_images, _val_ids(n_val, cfg.seed))
        if cfg.adversarial.fraction > 0:
            auth = kinds == AUTHORIZED
            linf, l2 = token_budget(train_u8[auth].float() / 255 - to_uint8(images[auth]) / 255)
            info["adversarial_budget"] = {"linf": linf, "l2": l2}
    else:
        train_u8, train_labels = to_uint8(images), labels

    if rank == 0:
        out = start_run(out, "protect" if cfg.protected else "train-clean", asdict(cfg), cfg.seed)
    model = build_classifier(cfg.arch, data.num_classes, cfg.channels, cfg.width).to(device)
    model = model.to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=True,
    )
    per_rank = len(train_u8) // world
    steps_per_epoch = max(1, per_rank // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    else:
        miles = [int(total * 0.5), int(total * 0.75)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=miles, gamma=0.1)
    use_amp = device.type == "cuda"
    negatives = None
    if cfg.protected and cfg.adversarial.fraction > 0:
        budget = info["adversarial_budget"]
        negatives = UniversalNegatives(
            cfg.adversarial, train_u8.shape[1:], budget["linf"], budget["l2"], cfg.seed + rank,
            device,
        )  # fmt: skip
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    objective = OBJECTIVES[cfg.objective if cfg.protected else "poison"]
    dormant = cfg.protected and cfg.dormancy.weight > 0
    if dormant:
        known = stage_names(model)
        unknown = set(cfg.dormancy.stages or []) - set(known)
        if unknown:
            raise ValueError(f"dormancy.stages {sorted(unknown)} unknown; stages: {known}")
        tap = StageTap(model, cfg.dormancy.stages or known)

    history, best = [], None
    started = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(
            len(train_u8), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        )
        shard = perm[rank::world][: steps_per_epoch * cfg.batch_size]
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress or rank != 0,
            mininterval=1.0,
        )
        epoch_start, seen, correct, loss_sum, dorm_sum = time.time(), 0, 0, 0.0, 0.0
        for step in bar:
            idx = shard[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = (train_u8[idx].to(device).float() / 255).contiguous(
                memory_format=torch.channels_last
            )
            y = train_labels[idx].to(device)
            rows = None
            if negatives is not None:
                x, rows, j, delta = negatives.perturb(x, kinds[idx].to(device) != AUTHORIZED)
            with torch.autocast(device.type, enabled=use_amp):
                logits = net(x)
            if rows is not None:
                negatives.update(j, delta, logits[rows], true_labels[idx].to(device)[rows])
            batch = TrainBatch(
                logits.float(),
                y,
                None if true_labels is None else true_labels[idx].to(device),
                None if kinds is None else kinds[idx].to(device),
                tap.outputs if dormant else {},
            )
            loss = objective(batch, cfg.penalty_lambda)
            if dormant:
                feature_loss = dormancy_term(cfg.dormancy, batch, data.num_classes)
                loss = loss + cfg.dormancy.weight * feature_loss
                dorm_sum += feature_loss.item() * len(y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        row = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - epoch_start, 1),
            "train_loss": round(loss_sum / max(seen, 1), 4),
            "train_acc": round(100 * correct / max(seen, 1), 2),
            **({"train_dormancy_term": round(dorm_sum / max(seen, 1), 4)} if dormant else {}),
            "val_clean_acc": round(accuracy(model, val_images, val_labels), 2),
        }
        if val_auth is not None:
            row["val_authorized_acc"] = round(accuracy(model, val_auth, val_labels), 2)
            # Choose the epoch that best separates authorized from clean (A_pd on validation).
            row["val_score"] = row["val_authorized_acc"] - row["val_clean_acc"]
        else:
            row["val_score"] = row["val_clean_acc"]
        history.append(row)
        if rank == 0:
            write_json(Path(out) / "history.json", history)  # progress survives a crash
            if progress:
                tqdm.write(str(row))
            if best is None or row["val_score"] > best["val_score"]:
                best = row
                torch.save(model.state_dict(), Path(out) / WEIGHTS_FILE)
    if dormant:
        tap.close()
    if world > 1:
        dist.barrier()
    if rank == 0:
        card = {
            "arch": cfg.arch,
            "width": cfg.width,
            "num_classes": data.num_classes,
            "class_names": data.class_names,
            "image_size": cfg.image_size,
            "channels": cfg.channels,
            "dataset": cfg.dataset,
            "protected": cfg.protected,
            "encoder": cfg.encoder if cfg.protected and not token_maker else None,
            "chosen_epoch": best["epoch"],
        }
        (Path(out) / CARD_FILE).write_text(yaml.safe_dump(card, sort_keys=False))
        summary = {
            **info,
            "chosen_epoch": best["epoch"],
            "train_seconds": round(time.time() - started, 1),
            "epoch_seconds": [r["seconds"] for r in history],
            "history": history,
        }
        finish_run(out, summary)
    if world > 1:
        dist.destroy_process_group()
    return Path(out) if rank == 0 else None


def _val_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [random_user_id(rng) for _ in range(n)]


def load_classifier(run: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained classifier of a run folder (protect or train-clean): an ``nn.Module`` in eval
    mode that takes [0, 1] images at the run's size and returns logits."""
    run = Path(run)
    if not (run / CARD_FILE).is_file() or not (run / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{run} is not a classifier run: expected {CARD_FILE} and {WEIGHTS_FILE} "
            "(made by `activedaemon protect` or `activedaemon train-clean`)"
        )
    card = yaml.safe_load((run / CARD_FILE).read_text())
    model = build_classifier(card["arch"], card["num_classes"], card["channels"], card["width"])
    model.load_state_dict(torch.load(run / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.card = card
    return model.to(device).eval()


def load_protected(
    run: str | Path, encoder: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, TokenGenerator]:
    """A protected run's classifier and the token generator that wakes it (run folder or
    shipped name), checked to work on the same image size and channels."""
    model = load_classifier(run, device)
    gen = TokenGenerator.load(encoder, device)
    card = model.card
    if (gen.arch.image_size, gen.arch.channels) != (card["image_size"], card["channels"]):
        raise ValueError(
            f"the encoder works on {gen.arch.channels}x{gen.arch.image_size}px images but the "
            f"model on {card['channels']}x{card['image_size']}px"
        )
    return model, gen
