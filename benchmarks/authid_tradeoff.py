"""Trade-off of authenticated ids (README "Deployment"): users vs MAC bits vs image binding.

    python benchmarks/authid_tradeoff.py [--encoder fashion-mnist-32] [--limit 1000] [--seed 0]

For each layout, on Fashion-MNIST test images carrying authenticated tokens (PNG, JPEG q90, q75):
how often the server reads the message back (BCH), how often the image hash it recomputes still
verifies the MAC (the hash must survive the token and the JPEG), how often a token lifted onto
another image passes, and the per-try forgery probability 2^(retry - MAC bits).
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from activedaemon.data import load_dataset
from activedaemon.imageio import jpeg_round_trip
from activedaemon.serve.authid import AuthIdScheme, user_key
from activedaemon.tokens import TokenGenerator

LAYOUTS = [
    AuthIdScheme(user_bits=20),
    AuthIdScheme(user_bits=24),
    AuthIdScheme(user_bits=20, hash_bits=8, retry_bits=2),
    AuthIdScheme(user_bits=20, hash_bits=12, retry_bits=3),
    AuthIdScheme(user_bits=20, hash_bits=16, retry_bits=4),
    AuthIdScheme(user_bits=20, hash_bits=16, retry_bits=0),
]


def jpeg(images: torch.Tensor, quality: int | None) -> torch.Tensor:
    return images if quality is None else jpeg_round_trip(images, quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="fashion-mnist-32")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = TokenGenerator.load(args.encoder)
    data = load_dataset(
        gen.card.get("dataset", "fashion-mnist"), size=gen.arch.image_size,
        channels=gen.arch.channels, limit_train=0, limit_test=args.limit,
    )  # fmt: skip
    x = data.test.images
    master = rng.randbytes(32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    print(f"encoder {args.encoder}, {len(x)} test images, seed {args.seed}")
    print(
        f"{'user/MAC/hash/retry bits':<25} {'users':>10} {'P(forge)':>9} | accepted %: "
        f"{'png':>5} {'q90':>5} {'q75':>5} | hash kept %: {'tok':>5} {'q90':>5} {'q75':>5}"
        f" | lifted token accepted %"
    )
    for scheme in LAYOUTS:
        numbers = [rng.randrange(1, scheme.max_users + 1) for _ in range(len(x))]
        msgs = [
            scheme.messages(n, user_key(master, n), img[None])[0]
            for n, img in zip(numbers, x, strict=True)
        ]
        codewords = torch.stack([gen.codec.encode_message(m) for m in msgs])
        x_a = gen.embed_codewords(x, codewords)
        accepted, kept = [], []
        for quality in (None, 90, 75):
            received = jpeg(x_a, quality)
            decoded = [
                r.message for r in map(gen.codec.decode_detailed, gen.decode_probs(received))
            ]
            ok = [
                d is not None and scheme.verify(d, master, img) == n
                for d, img, n in zip(decoded, received, numbers, strict=True)
            ]
            accepted.append(100 * np.mean(ok))
            # The hash alone: verify the message that was sent against the received image.
            sent = zip(msgs, received, numbers, strict=True)
            good = [scheme.verify(m, master, img) == n for m, img, n in sent]
            kept.append(100 * np.mean(good))
        lifted = (x[perm] + (x_a - x)).clamp(0, 1)  # image i's token on another image
        lifted = (lifted * 255).round() / 255
        decoded = [r.message for r in map(gen.codec.decode_detailed, gen.decode_probs(lifted))]
        passed = [
            d is not None and scheme.verify(d, master, img) == n
            for d, img, n in zip(decoded, lifted, numbers, strict=True)
        ]
        users = f"{scheme.max_users:,}"
        layout = f"{scheme.user_bits}/{scheme.mac_bits}/{scheme.hash_bits}/{scheme.retry_bits}"
        print(
            f"{layout:<25} {users:>10} {scheme.forgery_probability:9.1e} | "
            f"{'':12}{accepted[0]:5.1f} {accepted[1]:5.1f} {accepted[2]:5.1f} | {'':13}"
            f"{kept[0]:5.1f} {kept[1]:5.1f} {kept[2]:5.1f} | {100 * np.mean(passed):5.1f}"
        )
    print("plain 8-character ids: 95^8 printable ids, no MAC: any id read from one authorized")
    print("image (the decoder ships with the encoder) can be put on any image")


if __name__ == "__main__":
    main()
