"""Equal-steps training of our 224 px preset's networks and the authors' StegaStamp ones, small.

    OMP_NUM_THREADS=1 python benchmarks/tokens_224_training.py --out runs/t224 \\
        [--dataset fashion-mnist] [--size 32] [--steps 1000] [--set KEY=VALUE ...]

Both go through the same Algorithm 1 loop (tokens.train: losses, schedule, noise layer, seed),
the same steps and batches; only the networks differ: ours at `encoders/gpu-224`'s widths (its
64 x 64 secret map scaled with the image), the authors' from stegastamp_ref.py. Training at
224 px does not fit a CPU; this says whether the smaller, faster networks learn as well at a
size that does. Prints bit accuracy, exact-id rate and PSNR / SSIM on the test split for both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

import activedaemon.tokens.train as algorithm1
from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder

try:  # run as a script (python benchmarks/...) or imported from the repository root
    from stegastamp_ref import StegaStampDecoder, StegaStampEncoder
    from tokens_224 import arch_of
except ImportError:
    from benchmarks.stegastamp_ref import StegaStampDecoder, StegaStampEncoder
    from benchmarks.tokens_224 import arch_of

# The same short schedule for both: the authors' code trains without the critic (REFERENCE.md).
SCHEDULE = {"steps": 1000, "batch_size": 32, "critic": False, "noise_ramp_steps": 400,
            "limit_test": 500}  # fmt: skip
SHOWN = ("bit_accuracy", "exact_id_rate", "psnr", "ssim", "train_seconds")


def train_both(out: Path, values: dict, authors: bool = True) -> dict[str, dict]:
    arch = arch_of("gpu-224", values.get("image_size", 32))
    ours = {k: v for k, v in arch.to_dict().items() if k in PRESETS["gpu-224"]}
    results = {}
    for name, nets in (("ours (gpu-224)", ours), ("authors", None))[: 2 if authors else 1]:
        cfg = EncoderTrainConfig.from_dict({**(nets or {}), **values})  # --set wins
        if nets is None:  # the authors' networks in place of ours, for this run only
            saved = algorithm1.Encoder, algorithm1.Decoder
            algorithm1.Encoder = lambda a: StegaStampEncoder(a.image_size, a.channels)
            algorithm1.Decoder = lambda a: StegaStampDecoder(a.image_size, a.channels)
        try:
            gen = train_encoder(cfg, out / name.split()[0], progress=False)
        finally:
            if nets is None:
                algorithm1.Encoder, algorithm1.Decoder = saved
        params = sum(p.numel() for m in (gen.encoder, gen.decoder) for p in m.parameters())
        results[name] = {k: gen.card["metrics"][k] for k in SHOWN} | {"params": params}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=SCHEDULE["steps"])
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE (YAML value)")
    parser.add_argument("--ours-only", action="store_true", help="skip the authors' networks")
    args = parser.parse_args()
    values = {**SCHEDULE, "dataset": args.dataset, "image_size": args.size, "steps": args.steps}
    for item in args.set:
        key, _, text = item.partition("=")
        values[key] = yaml.safe_load(text)
    results = train_both(args.out, values, authors=not args.ours_only)
    (args.out / "comparison.json").write_text(json.dumps({"config": values, **results}, indent=2))
    print(f"{args.dataset} at {args.size} px, {args.steps} steps, seed {values.get('seed', 0)}")
    for name, row in results.items():
        print(f"{name:<16}" + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))


if __name__ == "__main__":
    main()
