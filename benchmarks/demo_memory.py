"""Peak memory (RSS) of the demo's data path, beside a baseline checkout's.

`activedaemon demo` trains a clean and a protected model on all of Fashion-MNIST (60,000 images
at 32 x 32 x 3) and evaluates them, in one process. Training itself holds little (a width-16
ResNet-18 and one batch); what sets the peak is the data: the training split, the poisoned set
of Algorithm 2 and the evaluation's test images. This benchmark runs those stages as the demo
does, in a fresh process per code version, without the epochs: the training set of the clean
model, then the protected model's (encoder loaded, poisoned set made), then the evaluation
(A_or, A_ad, A_ud, the fake-token rows and 1,000 per-user images) of two untrained models,
then the thief audit's data (its attack context and the thieves' samples). It prints the
process's peak RSS after each stage.

    python benchmarks/demo_memory.py                      # this checkout
    python benchmarks/demo_memory.py --baseline-src DIR   # and another checkout's src/ beside it
    python benchmarks/demo_memory.py --stream             # the streaming path too

Peak RSS is the high-water mark of the whole process (``ru_maxrss``), imports included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

STAGES = r"""
import dataclasses, json, resource, sys, tempfile
from pathlib import Path
import torch, yaml

from activedaemon.attacks.reverse import attacker_data
from activedaemon.attacks.suite import load_context
from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.protect.models import build_classifier
from activedaemon.demo import demo_config
from activedaemon.protect.train import build_training_set

stream = sys.argv[1] == "stream"
peaks = {}


def mark(stage):
    peaks[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def untrained_run(folder, cfg, protected):
    # A run folder both card readers take: the demo's architecture, fresh weights.
    folder.mkdir(parents=True)
    net = build_classifier(cfg.arch, 10, cfg.channels, cfg.width)
    torch.save(net.state_dict(), folder / "weights.pt")
    card = {"kind": "classifier", "schema": 1, "arch": cfg.arch, "width": cfg.width,
            "num_classes": 10, "image_size": cfg.image_size, "channels": cfg.channels,
            "normalization": None, "dataset": cfg.dataset, "protected": protected,
            "encoder": cfg.encoder if protected else None}
    (folder / "card.yaml").write_text(yaml.safe_dump(card))


mark("imports")
for protected in (False, True):
    # The demo's own recipes (cpu-small clean, cpu-recommended protected), without the epochs.
    cfg = dataclasses.replace(demo_config(protected), stream=stream, workers=0)
    data = build_training_set(cfg)
    info = data.info
    del data
    mark("protected set" if protected else "clean set")
with tempfile.TemporaryDirectory() as tmp:
    untrained_run(Path(tmp) / "clean", cfg, False)
    untrained_run(Path(tmp) / "protected", cfg, True)
    evaluate_protection(Path(tmp) / "protected", clean_run=Path(tmp) / "clean",
                        per_user_images=1000, seed=0)
    mark("evaluation")
    # The thief audit's data: its context (model, test images, the train split to sample from)
    # and the thieves' samples (1 % labelled, 1,000 unlabelled, as the quick audit draws them).
    ctx = load_context(Path(tmp) / "protected", limit_test=2000, seed=0)
    samples = [attacker_data(ctx, 600), attacker_data(ctx, 1000), ctx.test_x + 0]
    mark("audit data")
print(json.dumps({"peaks_gib": peaks, "train_images": info["train_images"]}))
"""


def measure(src: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", STAGES, mode], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{src} ({mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-src", type=Path, help="another checkout's src/ folder")
    p.add_argument("--stream", action="store_true", help="also measure the streaming path")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    runs = [("this checkout", HERE.parent / "src", "memory")]
    if args.stream:
        runs.append(("this checkout", HERE.parent / "src", "stream"))
    if args.baseline_src:
        runs.insert(0, ("baseline", args.baseline_src.resolve(), "memory"))
    rows = []
    for label, src, mode in runs:
        result = measure(src, mode)
        rows.append({"code": label, "src": str(src), "path": mode, **result})
        peaks = "  ".join(f"{k} {v:.2f}" for k, v in result["peaks_gib"].items())
        print(f"{label:>14} {mode:>6}: peak RSS (GiB) after {peaks}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
