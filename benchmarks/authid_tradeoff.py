"""Trade-off of authenticated ids (README "Deployment"): users vs MAC bits vs image binding.

    python benchmarks/authid_tradeoff.py [--encoder fashion-mnist-32] [--limit 1000] [--seed 0]

For each layout, on Fashion-MNIST test images carrying authenticated tokens (PNG, JPEG q90, q75):
how often the server reads the message back (BCH), how often the image hash it recomputes still
verifies the MAC (the hash must survive the token and the JPEG), how often a token lifted onto
another image passes, and the per-try forgery probability 2^(retry - MAC bits).

Then the nudge attack on image binding, for the bound layouts: an attacker
holds ``--pool`` authorized images of one user. For each of ``--targets`` new images it reads the
message of every pooled image (the decoder is public), picks the one whose hash (recomputed on the
authorized image) is cheapest to reach from the new image, nudges the new image within
``--nudge-eps`` per pixel (signed-gradient steps on the hash's DCT coefficients, which are linear
in the pixels) until its hash matches with a margin, rounds it to 8 bits and embeds the read
message with the public encoder. "Accepted" = the server reads the message back and the MAC
verifies against the hash it recomputes (with its retries).
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from activedaemon.data import load_dataset
from activedaemon.imageio import jpeg_round_trip
from activedaemon.serve.authid import AuthIdScheme, hash_coefficients, user_key
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


def quantize(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round() / 255


def nudge_attack(gen, scheme, master, pool, targets, eps, steps=100, margin=0.01) -> dict:
    """Replay one user's authorized messages onto new images nudged to match their image hash;
    -> accepted fraction, PSNR and max change of the nudge (see the module docstring)."""
    number, key = 1, user_key(master, 1)
    msgs = scheme.messages(number, key, pool)
    codewords = torch.stack([gen.codec.encode_message(m) for m in msgs])
    authorized = gen.embed_codewords(pool, codewords)
    # The attacker's view: the messages read back and the hashes of the authorized images.
    read = [r.message for r in map(gen.codec.decode_detailed, gen.decode_probs(authorized))]
    keep = [i for i, m in enumerate(read) if m is not None]
    signs = hash_coefficients(authorized[keep], scheme.hash_bits).sign()  # (P, bits)
    coef = hash_coefficients(targets, scheme.hash_bits)  # (T, bits)
    # Cost of reaching pool image p from target t: how far the wrong-sign coefficients must move.
    wrong = (coef[:, None, :] * signs[None] < margin).float()
    cost = ((coef[:, None, :].abs() + margin) * wrong).sum(-1)  # (T, P)
    choice = cost.argmin(1)
    want = signs[choice]
    delta = torch.zeros_like(targets, requires_grad=True)
    for _ in range(steps if eps > 0 else 0):
        c = hash_coefficients((targets + delta).clamp(0, 1), scheme.hash_bits)
        loss = torch.relu(margin - want * c).sum()
        if loss.item() == 0:
            break
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= eps / 20 * grad.sign()
            delta.clamp_(-eps, eps)
    nudged = quantize(targets + delta.detach())
    picked = [keep[i] for i in choice.tolist()]
    forged = gen.embed_codewords(nudged, codewords[picked])
    got = [r.message for r in map(gen.codec.decode_detailed, gen.decode_probs(forged))]
    ok = [
        m is not None and scheme.verify(m, master, img) == number
        for m, img in zip(got, forged, strict=True)
    ]
    mse = ((nudged - targets) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return {
        "accepted": 100 * float(np.mean(ok)),
        "psnr": float((10 * torch.log10(1 / mse)).median()),
        "max_change": float((nudged - targets).abs().max() * 255),
        "pool": len(keep),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="fashion-mnist-32")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=100, help="nudge attack: authorized images")
    parser.add_argument("--targets", type=int, default=100, help="nudge attack: new images")
    parser.add_argument("--nudge-eps", default="0,2,5", help="per-pixel budgets, in 1/255")
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
    pool, targets = x[: args.pool], x[args.pool : args.pool + args.targets]
    print(f"nudge attack: {args.pool} authorized images of one user, {len(targets)} new images")
    print(f"{'user/MAC/hash/retry bits':<25} {'eps/255':>7} {'accepted %':>10} {'PSNR dB':>8} "
          f"{'max change/255':>14}")  # fmt: skip
    for scheme in [s for s in LAYOUTS if s.hash_bits]:
        layout = f"{scheme.user_bits}/{scheme.mac_bits}/{scheme.hash_bits}/{scheme.retry_bits}"
        for eps in (float(e) for e in args.nudge_eps.split(",")):
            r = nudge_attack(gen, scheme, master, pool, targets, eps / 255)
            psnr = "inf" if eps == 0 else f"{r['psnr']:.1f}"
            print(f"{layout:<25} {eps:>7.0f} {r['accepted']:>10.1f} {psnr:>8} "
                  f"{r['max_change']:>14.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
