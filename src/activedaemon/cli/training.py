"""Training classifiers: `protect`, `train-clean`, `demo` and `sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path

from activedaemon.cli.common import (
    DEFAULT_ENCODER,
    add_command,
    add_data_flags,
    add_out,
    add_preset,
    add_quiet,
    add_seed,
    add_set,
    add_stream_flags,
    fraction,
    given_flags,
    parse_overrides,
    positive_float,
    positive_int,
    protect_config,
    split_names,
)


def add_training_flags(p: argparse.ArgumentParser, preset: str) -> None:
    """The flags `protect` and `train-clean` share."""
    add_out(p, "run folder to write", required=True)
    add_preset(p, preset)
    add_data_flags(p, limit_train=True)
    p.add_argument(
        "--arch",
        help="a registered classifier (default resnet18, CIFAR stem) or torchvision:NAME; an "
        "unknown name lists them",
    )
    p.add_argument(
        "--width", type=positive_int, help="ResNet base width (64 = standard; cpu-small 16)"
    )
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    add_seed(p, default=None, help="random seed, recorded in run.json (default 0)")
    add_stream_flags(p, " (tokens are made per batch)")
    add_set(p, "any ProtectConfig option, e.g. --set poison.noise_fraction=0.5")
    add_quiet(p, "no progress bars")


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "protect",
        help="train a protected classifier on the poisoned set (Algorithm 2)",
        description="Build the poisoned training set (gamma authorized with true labels; the "
        "rest clean, noised or carrying another image's token, with labels changed by the "
        "strategy) and train a classifier on it. Runs under torchrun for DDP "
        "(e.g. torchrun --nproc_per_node 2 -m activedaemon.cli protect ...). The epoch is "
        "chosen on a held-out validation split. The default preset, cpu-recommended, starts "
        "from the owner's clean model (--from, or a cpu-small model trained first into "
        "OUT/start); --preset cpu-small is the paper's Algorithm 2.",
    )
    add_training_flags(p, "cpu-recommended")
    p.add_argument(
        "--encoder", help=f"encoder run folder or shipped name (default {DEFAULT_ENCODER})"
    )
    p.add_argument(
        "--strategy",
        help="label strategy of the unauthorized samples (default single); an unknown name "
        "lists them",
    )
    p.add_argument("--gamma", type=fraction, help="fraction of authorized samples (default 0.2)")
    p.add_argument(
        "--from",
        dest="init_from",
        metavar="RUN|FILE|torchvision:NAME",
        help="start from a classifier the owner already has: a run folder (train-clean / "
        "protect), a state dict or TorchScript file of --arch, or torchvision's pretrained "
        "weights (sets --arch torchvision:NAME)",
    )
    p.set_defaults(func=cmd_train_classifier, protected=True)

    p = add_command(
        sub,
        "train-clean",
        help="train the unprotected baseline (gives A_or)",
        description="Train the same classifier on the clean training set with true labels.",
    )
    add_training_flags(p, "cpu-small")
    p.set_defaults(func=cmd_train_classifier, protected=False)

    p = add_command(
        sub,
        "demo",
        help="the whole pipeline on Fashion-MNIST (CPU presets): train, protect, evaluate, audit, "
        "report",
        description="Load the shipped JPEG-trained encoder (or train one with --train-encoder) "
        "and the shipped clean baseline (cpu-small: width-16 ResNet-18, 5 epochs, trained by "
        "this command; --train-clean, or any flag that changes its config, trains it here), "
        "protect it with the recommended recipe (cpu-recommended: 2 epochs from the clean "
        "model), evaluate, run the quick thief audit (what a thief without a token gets, beside "
        "its honest alternative), and write OUT/clean/, OUT/protected/, OUT/thieves.json, "
        "OUT/results.json and OUT/report.html. The shipped encoder is public: fine for a demo, "
        "not for a model you deploy (train-encoder).",
    )
    add_out(p, "output folder (default ./demo)", default="demo")
    p.add_argument("--train-encoder", action="store_true", help="train the encoder (+6 min)")
    p.add_argument(
        "--train-clean",
        action="store_true",
        help="train the clean baseline instead of starting from the shipped one (+6 min on 2 "
        "cores)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        help="epochs for both models (default: 5 for the clean one, the recipe's 2 to protect it)",
    )
    add_data_flags(p, dataset=None, data_root=False, limit_train=True, limit_test=True)
    add_seed(p)
    add_quiet(p, "no progress bars")
    p.set_defaults(func=cmd_demo)

    p = add_command(
        sub,
        "sweep",
        help="protect + evaluate over label strategies (Table II), gamma values (Fig. 2) or "
        "encoders (Table IX)",
        description="Train one clean baseline and one protected model per value, evaluate each, "
        "and write OUT/sweep.csv and OUT/sweep.png (run folders beside them). 'encoder' "
        "protects the preset's data set with each encoder given (trained on any data set, at "
        "this data's image size and channels) and adds A_dec, exact-id rate, PSNR and SSIM.",
    )
    p.add_argument("kind", choices=["strategy", "gamma", "encoder"])
    add_out(p, "folder for sweep.csv, sweep.png and the run folders", required=True)
    p.add_argument(
        "--values",
        help="comma-separated label strategies, gamma values or encoders (run folders or "
        "shipped names) (default: every strategy, gamma 0.01,0.05,0.1,0.2,0.5,0.8,0.99, or "
        "every shipped encoder)",
    )
    add_preset(p)
    p.add_argument("--epochs", type=positive_int)
    add_data_flags(p, dataset=None, data_root=False, limit_train=True, limit_test=True)
    add_set(p, "any ProtectConfig option, e.g. --set width=32")
    add_quiet(p)
    p.set_defaults(func=cmd_sweep)


TRAINING_FLAGS = (
    *("dataset", "data_root", "arch", "width", "batch_size", "lr", "seed", "epochs"),
    *("limit_train", "encoder", "init_from", "stream", "workers", "gamma", "strategy"),
)


def training_config(args: argparse.Namespace, protected: bool):
    """The ProtectConfig of `protect` / `train-clean`: preset, then flags, then --set (one deep
    merge, protect.config); every name in it checked."""
    flags = given_flags(args, TRAINING_FLAGS)
    source = flags.get("init_from") or ""
    if source.startswith("torchvision:") and "arch" not in flags:
        flags["arch"] = source  # pretrained torchvision weights bring their architecture
    return protect_config(args.preset, flags, args.set, {"protected": protected})


def cmd_train_classifier(args: argparse.Namespace) -> int:
    """`protect` and `train-clean`: one training loop, with or without the poisoned set."""
    cfg = training_config(args, args.protected)
    from activedaemon.protect import train_classifier

    out = train_classifier(cfg, args.out, progress=not args.quiet)
    if out is not None:  # None on DDP ranks other than 0
        print(f"{'protected' if args.protected else 'clean'} model written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from activedaemon.cli.evaluation import print_results
    from activedaemon.demo import run_demo

    results = run_demo(
        args.out,
        train_new_encoder=args.train_encoder,
        train_clean=args.train_clean,
        epochs=args.epochs,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        seed=args.seed,
        progress=not args.quiet,
    )
    print_results(results)
    print(f"report: {Path(args.out) / 'report.html'}; results: {Path(args.out) / 'results.json'}")
    return 0


def sweep_values(kind: str, text: str | None) -> list | None:
    """--values as the sweep takes them (None: the sweep's defaults)."""
    if not text:
        return None
    names = split_names(text)
    if kind in ("strategy", "encoder"):
        return names
    try:
        return [float(v) for v in names]
    except ValueError:
        raise ValueError(f"--values for a gamma sweep are numbers, got {text!r}") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from activedaemon.evaluate.sweep import default_values, point_values, run_sweep, sweep_base

    values = sweep_values(args.kind, args.values)
    flags = given_flags(args, ("epochs", "limit_train", "limit_test"))
    overrides = parse_overrides(args.set)
    # Every run's config is checked before the first trains (as run_sweep will build them).
    base = sweep_base(args.preset, overrides, flags)
    protect_config(base, fixed={"protected": False})
    for value in values or default_values(args.kind):
        protect_config(point_values(args.kind, base, value))

    path = run_sweep(
        args.kind, args.out, values, args.preset, overrides, flags, progress=not args.quiet
    )
    print(path.read_text())
    print(f"written to {path} and {path.with_suffix('.png')}")
    return 0
