"""Stealthiness metrics of authorized vs clean images (paper Sec. IV-A2c). PSNR, SSIM and
LPIPS, as reported, come from torchmetrics; ERGAS (:func:`ergas_per_image`, finite where a band is
all black) and :func:`ssim_fast` (the SSIM of the encoder's training loss, a separable blur) are
written here. LPIPS needs ImageNet backbone weights that torchvision downloads; where they cannot
be had, its value is None with the reason, never a made-up number."""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

log = logging.getLogger(__name__)
ERGAS_RATIO = 4  # torchmetrics' default; the paper does not state its ratio


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image pair, data range 1."""
    return peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (differentiable; also a training loss)."""
    return structural_similarity_index_measure(preds, target, data_range=1.0)


def ergas_per_image(
    preds: torch.Tensor, target: torch.Tensor, ratio: float = ERGAS_RATIO
) -> torch.Tensor:
    """ERGAS of each image pair: 100 / ratio * sqrt(mean over bands k of (RMSE_k / mu_k)^2), mu_k
    the mean of the clean (target) band, as torchmetrics computes it. A band whose clean mean is 0
    (an all-black channel, as in dark photo patches) has no relative error: torchmetrics makes
    the image's ERGAS, and so any mean over images, inf; here the mean runs over the bands that
    have one, and an image with none is NaN (left out by :func:`image_quality`)."""
    rmse = (preds - target).flatten(2).pow(2).mean(2).sqrt()
    mu = target.flatten(2).mean(2)
    defined = mu > 0
    rel = torch.where(defined, rmse / mu.where(defined, torch.ones_like(mu)), 0.0).pow(2)
    return 100 / ratio * (rel.sum(1) / defined.sum(1)).sqrt()  # 0 / 0 = NaN: no band defined


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


_WINDOW = _gaussian_window()


def _blur(t: torch.Tensor) -> torch.Tensor:
    c, w = t.shape[1], _WINDOW.to(t)
    t = F.conv2d(t, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(t, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_fast(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM with the same 11x11 Gaussian window (sigma 1.5) as torchmetrics, computed with a
    separable float32 blur: about 8x faster on this CPU, for the training loss. Reports use
    :func:`ssim`; a test keeps the two within 0.005."""
    c1, c2 = 0.01**2, 0.03**2
    mu_p, mu_t = _blur(preds), _blur(target)
    var_p = _blur(preds * preds) - mu_p**2
    var_t = _blur(target * target) - mu_t**2
    cov = _blur(preds * target) - mu_p * mu_t
    num = (2 * mu_p * mu_t + c1) * (2 * cov + c2)
    return (num / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))).mean()


@functools.cache
def lpips_status(net: str = "alex") -> tuple[object | None, str | None]:
    """(LPIPS module, None) where its weights load, else (None, why not); tried once."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).eval(), None
    except (
        Exception
    ) as e:  # torchvision's weight download raises URLError, OSError, RuntimeError...
        return None, (
            f"LPIPS needs the {net} ImageNet backbone weights, which torchvision could not load "
            f"({type(e).__name__}: {str(e)[:120]}); put them in the torch hub cache to enable it"
        )


@torch.no_grad()
def image_quality(
    authorized: torch.Tensor, clean: torch.Tensor, batch_size: int = 500, with_lpips: bool = True
) -> dict[str, float | str | None]:
    """Mean PSNR, SSIM, ERGAS (and LPIPS or None + reason) of authorized vs clean images;
    ``ergas_images``: how many images the ERGAS mean covers (those with a band that is not
    all black, see :func:`ergas_per_image`)."""
    if authorized.shape != clean.shape or authorized.ndim != 4:
        raise ValueError(f"shapes differ or are not NCHW: {authorized.shape} vs {clean.shape}")
    n = len(clean)
    sums = {"psnr": 0.0, "ssim": 0.0}
    ergas_sum, ergas_n = 0.0, 0
    lpips_model, reason = lpips_status() if with_lpips else (None, "not requested")
    lpips_sum = 0.0
    for i in range(0, n, batch_size):
        a, c = authorized[i : i + batch_size].float(), clean[i : i + batch_size].float()
        k = len(c)
        # Identical images have infinite PSNR; cap at 100 dB so that a mean stays finite.
        sums["psnr"] += psnr_per_image(a, c).clamp(max=100).sum().item()
        sums["ssim"] += ssim(a, c).item() * k
        e = ergas_per_image(a, c)
        ergas_sum, ergas_n = ergas_sum + e.nansum().item(), ergas_n + int(e.isfinite().sum())
        if lpips_model is not None:
            a3, c3 = (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t for t in (a, c))
            lpips_sum += lpips_model(a3, c3).item() * k
    out: dict[str, float | str | None] = {key: v / max(n, 1) for key, v in sums.items()}
    out["ergas"] = ergas_sum / ergas_n if ergas_n else None
    out["ergas_images"] = ergas_n
    out["lpips"] = lpips_sum / max(n, 1) if lpips_model is not None else None
    out["lpips_reason"] = reason
    return out


# -- measures of classifiers and fake tokens, shared by evaluation and the attacks ---------------
@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bs: int = 512):
    """Top-1 accuracy in percent; images float [0, 1] or uint8."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), bs):
        x = images[i : i + bs].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        correct += (model(x).argmax(1).cpu() == labels[i : i + bs]).sum().item()
    return 100.0 * correct / max(len(images), 1)


def gaussian_fake_tokens(tokens: torch.Tensor, seed: int, match_linf: bool = False):
    """Gaussian noise with each real token's L2 norm (the attacker knows the token's size);
    with ``match_linf`` also clipped to each token's L-inf size."""
    noise = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(seed))
    scale = tokens.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp(min=1e-12)
    noise = noise * scale.view(-1, 1, 1, 1)
    if match_linf:
        linf = tokens.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
        noise = torch.maximum(torch.minimum(noise, linf), -linf)
    return noise
