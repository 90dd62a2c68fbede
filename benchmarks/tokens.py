"""Token generator throughput and cost (Table X analogue), against a classifier forward pass.

    python benchmarks/tokens.py [--encoder fashion-mnist-32 ...] [--batch 256] [--repeats 10]

Prints, for each encoder named (all measured in the same run), images/s for embed (encoder +
clamp + 8-bit rounding) and identify (decoder + BCH), the parameters and forward FLOPs of encoder
and decoder, and the same for a torchvision ResNet-18 (10 classes) on the same images.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet18

from activedaemon.identity import random_user_id
from activedaemon.tokens import TokenGenerator


def images_per_second(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_images * repeats / (time.perf_counter() - start)


def flops(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops()


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", nargs="+", default=["fashion-mnist-32"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    for name in args.encoder:
        print(name, json.dumps(measure(TokenGenerator.load(name), args), indent=2), flush=True)


def measure(gen: TokenGenerator, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    a = gen.arch
    images = torch.rand(args.batch, a.channels, a.image_size, a.image_size)
    ids = [random_user_id() for _ in range(args.batch)]
    codewords = gen.codec.encode_batch(ids)
    classifier = resnet18(num_classes=10).eval()
    rgb = images.expand(-1, 3, -1, -1)

    authorized = gen.embed_codewords(images, codewords)
    results = {
        "batch": args.batch,
        "image_size": a.image_size,
        "threads": torch.get_num_threads(),
        "embed_images_per_s": images_per_second(
            lambda: gen.embed_codewords(images, codewords), args.batch, args.repeats
        ),
        "identify_images_per_s": images_per_second(
            lambda: gen.identify(authorized), args.batch, args.repeats
        ),
        "encode_ids_per_s": images_per_second(
            lambda: gen.codec.encode_batch(ids), args.batch, args.repeats
        ),
        "classifier_images_per_s": images_per_second(
            torch.no_grad()(lambda: classifier(rgb)), args.batch, args.repeats
        ),
        "encoder_params": params(gen.encoder),
        "decoder_params": params(gen.decoder),
        "classifier_params": params(classifier),
        "encoder_flops_per_image": flops(gen.encoder, images[:1], codewords[:1]),
        "decoder_flops_per_image": flops(gen.decoder, images[:1]),
        "classifier_flops_per_image": flops(classifier, rgb[:1]),
    }
    results["embed_vs_classifier_speed"] = (
        results["embed_images_per_s"] / results["classifier_images_per_s"]
    )
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}


if __name__ == "__main__":
    main()
