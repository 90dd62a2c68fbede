"""Streaming protection training (``protect --stream``): memory at two data set sizes, and
throughput against the in-memory path.

    OMP_NUM_THREADS=1 python benchmarks/streaming.py [--n 6000] [--scale 10] [--steps 100]

1. Peak RSS: writes a PNG class folder of N and of scale x N Fashion-MNIST training images
   (cycling through the 60,000 when larger) and trains one streaming epoch over each, in a fresh
   process per size. Reports the training process's peak RSS (getrusage) and the peak of the
   sampled sum over it and its DataLoader workers (/proc), and their ratios (target <= 1.10).
2. Throughput: the same number of steps of protection training on Fashion-MNIST (IDX), in
   memory and streaming, in fresh processes. Reports training images/s of the loop and of the
   whole run (the in-memory run builds its poisoned set up front, the streaming one per batch),
   and streaming / in-memory (target >= 0.8); the best of ``--repeats`` alternated runs each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_folder(root: Path, n: int) -> Path:
    """n Fashion-MNIST training images as PNG files in ROOT/<class>/ (kept if already there)."""
    from PIL import Image

    from activedaemon.data.datasets import read_idx

    if (root / "done").is_file():
        return root
    images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        j = i % len(images)
        Image.fromarray(images[j]).save(root / f"class{labels[j]}" / f"{i:07d}.png")
    (root / "done").touch()
    return root


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants (KiB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
    return total


def child(spec: dict) -> None:
    """One training run in this (fresh) process; prints its figures as JSON."""
    from activedaemon.protect.train import ProtectConfig, train_classifier

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], _tree_rss_kib(os.getpid()))

    threading.Thread(target=sample, daemon=True).start()
    cfg = ProtectConfig.from_dict(spec["config"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train_classifier(cfg, out, progress=False)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    stop.set()
    trained = metrics["train_images"] // cfg.batch_size * cfg.batch_size
    print(json.dumps({
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_tree_rss_mib": peak[0] / 1024,
        "train_images": metrics["train_images"],
        "loop_images_per_s": trained / metrics["epoch_seconds"][0],
        "run_images_per_s": trained / (time.perf_counter() - started),
        "epoch_seconds": metrics["epoch_seconds"][0],
        "wall_seconds": time.perf_counter() - started,
    }))  # fmt: skip


def run(config: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--child", json.dumps({"config": config})]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000, help="images of the 1x folder")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100, help="steps of the throughput runs")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs of each path")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folder-root", default=None, help="where to write the PNG folders")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    # The defaults otherwise: 5 % held out for validation (read in batches of 128 as well).
    common = {"arch": "resnet18", "width": args.width, "epochs": 1, "batch_size": 128,
              "seed": 0, "encoder": "fashion-mnist-32", "workers": args.workers}  # fmt: skip
    report: dict = {"seed": 0, "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                    "cpus": os.cpu_count(), "workers": args.workers}  # fmt: skip
    if not args.skip_rss:
        root = Path(args.folder_root or tempfile.gettempdir()) / "activedaemon-stream-bench"
        sizes = {}
        for n in (args.n, args.scale * args.n):
            started = time.perf_counter()
            folder = write_folder(root / f"fmnist-{n}", n)
            print(f"folder of {n} images ready ({time.perf_counter() - started:.0f} s)", flush=True)
            # A width-4 network: the model's memory does not depend on N; this keeps it quick.
            cfg = {**common, "width": 4, "dataset": f"imagefolder:{folder}", "stream": True}
            sizes[n] = run(cfg)
            print(f"{n} images: {json.dumps(sizes[n])}", flush=True)
        small, large = sizes[args.n], sizes[args.scale * args.n]
        report["rss"] = {
            "images": list(sizes),
            "peak_rss_mib": [round(s["peak_rss_mib"], 1) for s in sizes.values()],
            "peak_tree_rss_mib": [round(s["peak_tree_rss_mib"], 1) for s in sizes.values()],
            "ratio_process": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
            "ratio_tree": round(large["peak_tree_rss_mib"] / small["peak_tree_rss_mib"], 3),
        }
    if not args.skip_speed:
        # steps x 128 training images after the 5 % validation split.
        limit = int(np.ceil(args.steps * 128 / 0.95)) + 1
        speed: dict = {}
        for _ in range(args.repeats):  # alternated, best of each: a shared machine is noisy
            for name, stream in (("memory", False), ("stream", True)):
                cfg = {**common, "dataset": "fashion-mnist", "limit_train": limit, "stream": stream}
                result = run(cfg)
                print(f"{name}: {json.dumps(result)}", flush=True)
                best = speed.get(name)
                if best is None or result["loop_images_per_s"] > best["loop_images_per_s"]:
                    speed[name] = result
        report["speed"] = {
            "steps": args.steps,
            "repeats": args.repeats,
            "loop_images_per_s": {k: round(v["loop_images_per_s"], 1) for k, v in speed.items()},
            "run_images_per_s": {k: round(v["run_images_per_s"], 1) for k, v in speed.items()},
            "loop_ratio_stream_over_memory": round(
                speed["stream"]["loop_images_per_s"] / speed["memory"]["loop_images_per_s"], 3
            ),
            "run_ratio_stream_over_memory": round(
                speed["stream"]["run_images_per_s"] / speed["memory"]["run_images_per_s"], 3
            ),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
