"""Cost of protection: one epoch of protected training vs one of clean training, same run.

    python benchmarks/protect_overhead.py [--limit-train 20000] [--width 16]

Prints the epoch seconds of each, their ratio (target <= 1.10), and the one-time cost of building
the poisoned set (tokens for the authorized and mismatched samples).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from activedaemon.protect.train import ProtectConfig, train_classifier


def one_epoch(protected: bool, args: argparse.Namespace, out: Path) -> dict:
    cfg = ProtectConfig(
        epochs=1, width=args.width, limit_train=args.limit_train, limit_test=1000,
        protected=protected, seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    train_classifier(cfg, out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "epoch_seconds": metrics["epoch_seconds"][0],
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clean = one_epoch(False, args, Path(tmp) / "clean")
        protected = one_epoch(True, args, Path(tmp) / "protected")
    print(json.dumps({
        "train_images": args.limit_train,
        "clean_epoch_seconds": round(clean["epoch_seconds"], 1),
        "protected_epoch_seconds": round(protected["epoch_seconds"], 1),
        "epoch_ratio_protected_over_clean": round(
            protected["epoch_seconds"] / clean["epoch_seconds"], 3
        ),
        "setup_seconds_clean": round(clean["wall_seconds"] - clean["epoch_seconds"], 1),
        "setup_seconds_protected": round(protected["wall_seconds"] - protected["epoch_seconds"], 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
