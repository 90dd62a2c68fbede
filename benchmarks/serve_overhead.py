"""Per-query cost of the gate: decode + verify + classify vs the bare classifier, same batch.

    python benchmarks/serve_overhead.py [--model RUN] [--width 16] [--repeats 50] [--seed 0]

Without --model it times an untrained ResNet-18 of the given width (the cpu-small preset's
architecture; weights do not change the cost). Prints, per batch size, the median milliseconds of:
the bare forward; decode (decoder + BCH) + registry check + forward (target <= 1.5x the bare
forward); and the whole request path without HTTP (PNG decode, the above, the audit write).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from activedaemon.client import png_bytes
from activedaemon.data import load_dataset
from activedaemon.protect import build_classifier, load_classifier
from activedaemon.serve.gate import Gatekeeper
from activedaemon.serve.registry import Registry, sqlite_url
from activedaemon.tokens import TokenGenerator

USER = "benchusr"


def write_untrained_run(out: Path, width: int, gen: TokenGenerator, seed: int = 0) -> Path:
    """A classifier run folder (card + weights) with random weights, for timing only."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    model = build_classifier("resnet18", 10, gen.arch.channels, width)
    torch.save(model.state_dict(), out / "weights.pt")
    card = {"arch": "resnet18", "width": width, "num_classes": 10,
            "class_names": [f"class {i}" for i in range(10)], "image_size": gen.arch.image_size,
            "channels": gen.arch.channels, "protected": False, "encoder": None}  # fmt: skip
    (out / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return out


def median_ms(fns: list, repeats: int) -> list[float]:
    """Median milliseconds of each function, run interleaved so that load from other processes
    on a shared machine falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t))
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="protected run folder (default: untrained, see --width)")
    parser.add_argument("--encoder", default="fashion-mnist-32")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    gen = TokenGenerator.load(args.encoder)
    tmp = tempfile.TemporaryDirectory()
    if args.model:
        run, what = Path(args.model), args.model
    else:
        run = write_untrained_run(Path(tmp.name) / "run", args.width, gen, args.seed)
        what = f"untrained resnet18 width {args.width}"
    model = load_classifier(run)
    registry = Registry(sqlite_url(Path(tmp.name) / "bench.db"))
    registry.add_user(USER)
    gate = Gatekeeper(gen, model, registry, model.card["class_names"])
    sizes = [int(b) for b in args.batches.split(",")]
    data = load_dataset("fashion-mnist", size=gen.arch.image_size, channels=gen.arch.channels,
                        limit_train=0, limit_test=max(sizes))  # fmt: skip
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {what}, "
        f"encoder {args.encoder}, seed {args.seed}, median of {args.repeats}"
    )
    print(f"{'batch':>5} {'forward ms':>11} {'gate ms':>9} {'ratio':>6} {'request ms':>11} "
          f"{'ratio':>6}")  # fmt: skip
    for n in sizes:
        x_a = gen.embed(data.test.images[:n], USER)
        blobs = [png_bytes(img) for img in x_a]

        def bare(x=x_a) -> None:
            with torch.inference_mode():
                model(x)

        def gated(x=x_a) -> None:
            users, _, _ = gate.identify_users(x)
            assert all(u is not None and u.active for u in users)
            with torch.inference_mode():
                torch.softmax(model(x), 1)

        def request(b=blobs) -> None:
            gate.answer(b)

        f, g, r = median_ms([bare, gated, request], args.repeats)
        print(f"{n:>5} {f:11.2f} {g:9.2f} {g / f:6.2f} {r:11.2f} {r / f:6.2f}")
    registry.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
