"""Stolen-token attacks (beyond the paper): a wiretapper's K authorized images of one user."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack, wake_verdict
from activedaemon.attacks.reverse import attacker_data


class SurrogateGenerator(nn.Module):
    """x -> residual: a learned constant map (the image-independent part of the user's token)
    plus a small conv net (the image-dependent part)."""

    def __init__(self, channels: int, size: int, width: int = 32):
        super().__init__()
        self.constant = nn.Parameter(torch.zeros(1, channels, size, size))
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.constant + self.net(x - 0.5)


def fit_surrogate(clean, residual, steps: int, seed: int) -> SurrogateGenerator:
    """Fit a SurrogateGenerator to (clean image, stolen residual) pairs by MSE."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SurrogateGenerator(clean.shape[1], clean.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(len(clean), (min(64, len(clean)),), generator=gen)
        loss = F.mse_loss(model(clean[idx]), residual[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@register_attack("stolen", needs={"encoder", "attacker_data"})
def stolen(
    ctx: AttackContext, counts: tuple[int, ...] | None = None, steps: int | None = None
) -> AttackResult:
    """Stolen tokens, K = 1..1000 authorized images of one user with their clean versions:
    (a) the mean stolen residual added to new images; (b) a surrogate residual generator
    (constant map + small conv net) fitted to the K pairs and applied to new images. Accuracy on
    the test images against K, and how often the forged query decodes to the victim's id.

    Threat model: a wiretapper sees K of one user's authorized queries and has the same images
    without tokens (e.g. the user's own photos); no encoder and no model weights are needed to
    forge, and the protected model (or its API) is queried with the forgeries.
    """
    counts = counts or ((1, 16) if ctx.fast else (1, 10, 100, 1000))
    steps = steps or (30 if ctx.fast else 400)
    victim = ctx.user_ids[0]
    x_pool, _ = attacker_data(ctx, max(counts))
    residual_pool = ctx.encoder.token(x_pool, victim)
    mean_acc, surrogate_acc, mean_ids, surrogate_ids = [], [], [], []

    for k in counts:
        forged = ctx.test_x + residual_pool[:k].mean(0, keepdim=True)
        mean_acc.append(ctx.acc(forged))
        mean_ids.append(ctx.decode_rate(forged, victim))
        surrogate = fit_surrogate(x_pool[:k], residual_pool[:k], steps, ctx.seed)
        with torch.no_grad():
            forged = torch.cat([x + surrogate(x) for x in ctx.test_x.split(1024)])
        surrogate_acc.append(ctx.acc(forged))
        surrogate_ids.append(ctx.decode_rate(forged, victim))
    best = max(mean_acc + surrogate_acc)
    target, verdict = wake_verdict(best, ctx, "half")
    metrics = {f"mean_residual_K{k}": a for k, a in zip(counts, mean_acc, strict=True)}
    metrics.update({f"surrogate_K{k}": a for k, a in zip(counts, surrogate_acc, strict=True)})
    metrics.update(
        best_accuracy=best,
        forged_decodes_as_victim_pct=max(mean_ids + surrogate_ids),
    )
    return AttackResult(
        metrics,
        target,
        verdict,
        curve={
            "x": "K stolen authorized images",
            "x_values": list(counts),
            "series": {
                "mean residual": mean_acc,
                "surrogate generator": surrogate_acc,
                "mean residual decodes as victim (%)": mean_ids,
                "surrogate decodes as victim (%)": surrogate_ids,
            },
            "log_x": True,
        },
        params={"counts": list(counts), "steps": steps},
        notes=[
            "A forged query that decodes to the victim's id passes the service's registry check; "
            "only the model's own lock (or the image-bound MAC option of the service) stops it."
        ],
    )
