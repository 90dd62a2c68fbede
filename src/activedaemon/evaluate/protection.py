"""Evaluate a protected model the paper's way (Sec. IV-A2, Tables I, IV, VII, VIII).

A_or: clean model on clean test images. A_ad: protected model on authorized test images (each with
a random user's token). A_ud: protected model on clean test images. A_od = A_ad - A_or,
A_pd = A_ad - A_ud. A_dec: message bits decoded right. A_td_gaussian: Gaussian noise scaled to each
real token's L2 norm, in place of the token (Table IV). A_td_mismatched: the token made for
another test image (Table VII). All accuracies in percent against the true labels.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from activedaemon.data import load_dataset
from activedaemon.identity import random_user_id
from activedaemon.imageio import round_8bit_
from activedaemon.metrics import accuracy, gaussian_fake_tokens, image_quality, lpips_status
from activedaemon.protect.checkpoint import load_classifier, load_protected
from activedaemon.runs import git_commit
from activedaemon.tokens import TokenGenerator
from activedaemon.tokens.evaluate import decoding_metrics

RESULT_KEYS = (
    "A_or", "A_ad", "A_ud", "A_od", "A_pd", "A_dec", "psnr", "ssim", "ergas", "lpips",
    "A_td_gaussian", "A_td_mismatched",
)  # fmt: skip


@torch.no_grad()
def evaluate_protection(
    model_run: str | Path,
    encoder: str | Path | None = None,
    clean_run: str | Path | None = None,
    *,
    data_root: str | None = None,
    limit_test: int | None = None,
    per_user_images: int = 1000,
    seed: int = 0,
    force_encoder: bool = False,
) -> dict:
    """The metrics of a protected run, plus a per-user table of 18 ids (9 printable-ASCII,
    9 alphanumeric, as Table VIII). ``encoder`` defaults to the one on the model's card."""
    lpips_status()  # tried first: its backbone (AlexNet) is built while little else is held
    model, gen = load_protected(model_run, encoder, force=force_encoder)
    encoder = encoder or model.card["encoder"]
    card = model.card
    data = load_dataset(
        card["dataset"],
        data_root,
        size=card["image_size"],
        channels=card["channels"],
        limit_train=0,
        limit_test=limit_test,
    )
    x, y = data.test.images, data.test.labels
    rng = random.Random(seed)
    ids = [random_user_id(rng, "ascii" if i % 2 else "alnum") for i in range(len(y))]
    codewords = gen.codec.encode_batch(ids)
    authorized = gen.embed_codewords(x, codewords)
    tokens = authorized - x

    results: dict = {
        "model": str(model_run),
        "encoder": str(encoder),
        "clean_model": str(clean_run) if clean_run else None,
        "dataset": card["dataset"],
        "test_images": len(y),
        "seed": seed,
        "commit": git_commit(),
    }
    results["A_ad"] = accuracy(model, authorized, y)
    results["A_ud"] = accuracy(model, x, y)
    results["A_or"] = accuracy(load_classifier(clean_run), x, y) if clean_run else None
    results["A_od"] = results["A_ad"] - results["A_or"] if clean_run else None
    results["A_pd"] = results["A_ad"] - results["A_ud"]
    # The fake-token rows first, so that the tokens are freed before decoding: x + fake token,
    # rounded to 8 bits, made in place (one test-set-sized tensor at a time).
    fake = torch.add(x, gaussian_fake_tokens(tokens, seed))
    fake_rows = {"A_td_gaussian": accuracy(model, round_8bit_(fake), y)}
    fake = torch.add(x, tokens.roll(1, dims=0), out=fake)
    fake_rows["A_td_mismatched"] = accuracy(model, round_8bit_(fake), y)
    del fake, tokens
    decoding = decoding_metrics(gen, authorized, ids, codewords)
    results["A_dec"] = decoding["A_dec"]
    results["exact_id_rate"] = decoding["exact_id_rate"]
    results.update(image_quality(authorized, x))
    results.update(fake_rows)
    results["per_user"] = (
        per_user_table(model, gen, x[:per_user_images], y[:per_user_images], seed)
        if per_user_images
        else []
    )
    return results


def per_user_table(model, gen: TokenGenerator, x, y, seed: int) -> list[dict]:
    """A_ad and A_dec for 18 random ids: 9 from all printable ASCII, 9 alphanumeric."""
    rng = random.Random(seed + 18)
    rows = []
    for alphabet in ("ascii", "alnum"):
        for _ in range(9):
            user_id = random_user_id(rng, alphabet)
            codewords = gen.codec.encode(user_id).expand(len(y), -1)
            authorized = gen.embed_codewords(x, codewords)
            rows.append(
                {
                    "user_id": user_id,
                    "alphabet": alphabet,
                    "A_ad": accuracy(model, authorized, y),
                    "A_dec": decoding_metrics(gen, authorized, [user_id] * len(y), codewords)[
                        "A_dec"
                    ],
                }
            )
    return rows
