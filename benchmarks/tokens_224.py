"""Our token networks against the authors' StegaStamp ones, at 32 and 224 px.

    OMP_NUM_THREADS=2 python benchmarks/tokens_224.py [--sizes 32 224] [--rounds 5]

Every network goes through the same TokenGenerator (channels_last, clamp, 8-bit rounding, BCH),
untrained, in one process at one thread count. Prints images/s for embed (encoder + clamp +
rounding) and identify (decoder + BCH), parameters, forward multiply-adds per image, and each of
ours as a ratio of the authors' (> 1: ours is faster). Rows: ours at the default widths
(`encoders/cpu`), at `encoders/gpu-paper`'s and at `encoders/gpu-224`'s (the 224 px preset; its
64 x 64 secret map is scaled with the image below 224 px), and the authors' (stegastamp_ref.py).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from activedaemon.identity import random_user_id
from activedaemon.tokens import TokenGenerator
from activedaemon.tokens.networks import ArchConfig
from activedaemon.tokens.train import PRESETS

try:  # run as a script (python benchmarks/tokens_224.py) or imported from the repository root
    from stegastamp_ref import StegaStampDecoder, StegaStampEncoder
except ImportError:
    from benchmarks.stegastamp_ref import StegaStampDecoder, StegaStampEncoder


def arch_of(preset: str, size: int) -> ArchConfig:
    """ArchConfig of an encoder preset at ``size`` px (the secret map scaled with the image)."""
    values = PRESETS[preset]
    fields = ArchConfig.__dataclass_fields__
    arch = {k: v for k, v in values.items() if k in fields and k != "image_size"}
    if arch.get("secret_size"):
        arch["secret_size"] = max(1, round(arch["secret_size"] * size / values["image_size"]))
    return ArchConfig(image_size=size, **arch)


def generators(size: int) -> dict[str, TokenGenerator]:
    torch.manual_seed(0)
    gens = {name: TokenGenerator(arch_of(name, size)) for name in ("cpu", "gpu-paper", "gpu-224")}
    arch = ArchConfig(image_size=size)
    gens["authors"] = TokenGenerator(arch, StegaStampEncoder(size), StegaStampDecoder(size))
    return gens


def best_seconds(calls: dict[str, Callable], rounds: int) -> dict[str, float]:
    """The best time of each call over ``rounds`` rounds that take turns (the CPU is shared:
    interleaving spreads other jobs' load over every call alike)."""
    for fn in calls.values():
        fn()  # warm-up
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def macs(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 2 / len(inputs[0])


def measure(gens: dict[str, TokenGenerator], batch: int, rounds: int) -> dict[str, dict]:
    calls, rows = {}, {}
    for name, gen in gens.items():
        a = gen.arch
        images = torch.rand(batch, a.channels, a.image_size, a.image_size)
        codewords = gen.codec.encode_batch([random_user_id() for _ in range(batch)])
        authorized = gen.embed_codewords(images, codewords)
        calls[(name, "embed")] = lambda g=gen, x=images, c=codewords: g.embed_codewords(x, c)
        calls[(name, "identify")] = lambda g=gen, x=authorized: g.identify(x)
        rows[name] = {
            "enc_params": sum(p.numel() for p in gen.encoder.parameters()),
            "dec_params": sum(p.numel() for p in gen.decoder.parameters()),
            "enc_macs": macs(gen.encoder, images[:2], codewords[:2]),
            "dec_macs": macs(gen.decoder, images[:2]),
        }
    for (name, what), seconds in best_seconds(calls, rounds).items():
        rows[name][what] = batch / seconds
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 16], help="per size")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load()}")
    head = "embed/s  identify/s  x embed  x ident  enc params  dec params  enc MAC  dec MAC"
    for size, batch in zip(args.sizes, args.batch, strict=True):
        print(f"\n{size} px, batch {batch}{'':14}{head}")
        rows = measure(generators(size), batch, args.rounds)
        ref = rows["authors"]
        for name, r in rows.items():
            print(
                f"{name:<24}{r['embed']:>9.1f}{r['identify']:>12.1f}"
                f"{r['embed'] / ref['embed']:>9.2f}{r['identify'] / ref['identify']:>9.2f}"
                f"{r['enc_params'] / 1e6:>10.2f} M{r['dec_params'] / 1e6:>10.2f} M"
                f"{r['enc_macs'] / 1e9:>8.2f} G{r['dec_macs'] / 1e9:>7.2f} G"
            )

    print(f"\nload average at the end {load()}")


def load() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


if __name__ == "__main__":
    main()
