"""Stealth and decoding report of a token generator (eval-tokens; paper Table III, Fig. 9)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from activedaemon.identity import MESSAGE_BITS, random_user_id
from activedaemon.imageio import jpeg_round_trip, round_8bit
from activedaemon.metrics import image_quality
from activedaemon.tokens.generator import TokenGenerator


def decoding_metrics(
    gen: TokenGenerator, images: torch.Tensor, ids: list[str], codewords: torch.Tensor
) -> dict[str, float]:
    """Bit accuracy (127 bits), A_dec (% of the 64 message bits, before BCH), exact-id rate (%)."""
    probs = gen.decode_probs(images)
    correct = (probs > 0.5).float() == codewords
    decoded = gen.codec.decode_batch(probs)
    return {
        "bit_accuracy": correct.float().mean().item(),
        "A_dec": 100 * correct[:, :MESSAGE_BITS].float().mean().item(),
        "exact_id_rate": 100 * sum(d == u for d, u in zip(decoded, ids, strict=True)) / len(ids),
    }


def _mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean().item()


@torch.no_grad()
def evaluate_tokens(
    gen: TokenGenerator,
    images: torch.Tensor,
    seed: int = 0,
    noise_sigmas: tuple[float, ...] = (0.01, 0.02),
    jpeg_qualities: tuple[int, ...] = (90, 75),
) -> dict:
    """Metrics on ``images`` (test images) with fresh random ids, never seen in training.

    - PSNR / SSIM / ERGAS / LPIPS of 8-bit authorized vs clean images;
    - A_dec (% of the 64 message bits the decoder reads right, before BCH), bit accuracy over all
      127 bits, exact-id rate (% whose BCH-decoded id equals the true id), clean and after
      Gaussian noise of each sigma in ``noise_sigmas`` (clamped and re-rounded to 8 bits) and
      after a real JPEG encode / decode at each quality in ``jpeg_qualities`` (honest transit);
    - clean images: % for which some id is read (should be 0);
    - token distinctness (the paper's *dynamic* tokens): mean cosine similarity of the tokens of
      one id on two different images, and of two ids on one image;
    - mismatched tokens: the token made for image x' added to x; % of them still read as the id.
      Near 100 % means tokens are image-independent and can be moved between images.
    """
    rng = random.Random(seed)
    n = len(images)
    ids = [random_user_id(rng, "ascii" if i % 2 else "alnum") for i in range(n)]
    codewords = gen.codec.encode_batch(ids)
    authorized = gen.embed_codewords(images, codewords)
    report: dict = {"images": n, "seed": seed}
    report.update(image_quality(authorized, images))
    report.update(decoding_metrics(gen, authorized, ids, codewords))

    transported = {}
    for sigma in noise_sigmas:
        noise_gen = torch.Generator().manual_seed(seed)
        noise = sigma * torch.randn(authorized.shape, generator=noise_gen)
        transported[f"noise{sigma:g}"] = round_8bit(authorized + noise)
    for quality in jpeg_qualities:
        transported[f"jpeg{quality}"] = jpeg_round_trip(authorized, quality)
    for name, received in transported.items():
        for key, value in decoding_metrics(gen, received, ids, codewords).items():
            report[f"{key}_{name}"] = value
    report["clean_identified_rate"] = 100 * sum(u is not None for u in gen.identify(images)) / n

    # Dynamic tokens: one id on two images, and two ids on one image.
    tokens = authorized - images
    other_images = images.roll(1, dims=0)
    # Row i: id i on image i-1, beside tokens[i]: id i on image i.
    same_id_other_image = gen.embed_codewords(other_images, codewords) - other_images
    report["token_cosine_same_id_across_images"] = _mean_pairwise_cosine(
        tokens, same_id_other_image
    )
    other_codewords = codewords.roll(1, dims=0)
    report["token_cosine_same_image_across_ids"] = _mean_pairwise_cosine(
        tokens, gen.embed_codewords(images, other_codewords) - images
    )
    # Mismatched: the token of image i (for id i) moved onto image i+1.
    moved = (other_images + tokens).clamp(0, 1)
    moved_ids = gen.identify(moved)
    report["mismatched_token_id_rate"] = (
        100 * sum(d == u for d, u in zip(moved_ids, ids, strict=True)) / n
    )
    report["token_linf_mean"] = tokens.flatten(1).abs().amax(1).mean().item()
    report["token_l2_mean"] = tokens.flatten(1).norm(dim=1).mean().item()
    return report
