"""Transit robustness (beyond the paper): what ordinary image handling does to tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack
from activedaemon.imageio import jpeg_round_trip
from activedaemon.tokens.generator import TokenGenerator, shipped_encoders


def resize_round_trip(images: torch.Tensor, scale: float) -> torch.Tensor:
    size = images.shape[-1]
    small = F.interpolate(images, scale_factor=scale, mode="bilinear", antialias=True)
    return F.interpolate(small, size=(size, size), mode="bilinear").clamp(0, 1)


def transforms(seed: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The transit transformations by name, each [0, 1] images -> [0, 1] images."""
    gen = torch.Generator().manual_seed(seed)
    table = {"none": lambda x: x}
    for q in (95, 90, 75, 50):
        table[f"jpeg q{q}"] = lambda x, q=q: jpeg_round_trip(x, q)
    for s in (0.75, 0.5):
        table[f"resize x{s:g} and back"] = lambda x, s=s: resize_round_trip(x, s)
    for sigma in (0.5, 1.0):
        table[f"blur sigma {sigma:g}"] = lambda x, sigma=sigma: gaussian_blur(x, 3, sigma)
    for sigma in (0.01, 0.02, 0.05):
        table[f"noise sigma {sigma:g}"] = lambda x, sigma=sigma: (
            x + sigma * torch.randn(x.shape, generator=gen)
        ).clamp(0, 1)
    return table


@register_attack("transit", needs={"decoder"})
def transit(ctx: AttackContext) -> AttackResult:
    """JPEG (quality 95-50), resize down and back, Gaussian blur and Gaussian noise applied to
    authorized images; A_ad and the exact-id decode rate after each. Beside them, the exact-id
    rate of every shipped encoder made for the same image size and channels (``decoded {t} via
    NAME``), so that the model's encoder is seen next to the alternatives.

    Threat model: no attacker: the channel between user and model (uploads, messengers, photo
    tools) re-encodes images; a token that breaks there locks out honest users.
    """
    names, a_ad, decoded = [], [], []
    for name, fn in transforms(ctx.seed).items():
        images = fn(ctx.authorized)
        names.append(name)
        a_ad.append(ctx.acc(images))
        decoded.append(ctx.decode_rate(images))
    metrics = {f"A_ad {n}": a for n, a in zip(names, a_ad, strict=True)}
    metrics.update({f"decoded {n}": d for n, d in zip(names, decoded, strict=True)})
    series = {"A_ad": a_ad, "exact id decoded (%)": decoded}
    for shipped, gen in _shipped_alternatives(ctx).items():
        authorized = gen.embed(ctx.test_x, ctx.user_ids)
        rates = [
            ctx.decode_rate(fn(authorized), encoder=gen) for fn in transforms(ctx.seed).values()
        ]
        metrics.update({f"decoded {n} via {shipped}": r for n, r in zip(names, rates, strict=True)})
        series[f"exact id decoded via {shipped} (%)"] = rates
    return AttackResult(
        metrics,
        curve={"x": "transformation", "x_values": names, "series": series, "categorical": True},
    )


def _shipped_alternatives(ctx: AttackContext) -> dict[str, TokenGenerator]:
    """The shipped encoders for the context's image size and channels, by name."""
    if ctx.encoder is None:
        return {}
    want = (ctx.encoder.arch.image_size, ctx.encoder.arch.channels)
    found = {}
    for name in shipped_encoders():
        gen = TokenGenerator.load(name)
        if (gen.arch.image_size, gen.arch.channels) == want:
            found[name] = gen
    return found
