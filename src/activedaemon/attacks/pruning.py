"""Magnitude pruning (Fig. 7/8): zero the smallest weights of all conv and linear layers."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import prune

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack


def pruned_copy(model: nn.Module, rate: float) -> nn.Module:
    """A copy of ``model`` with the fraction ``rate`` of its conv / linear weights, smallest in
    magnitude over all such layers together, set to zero (global L1 unstructured pruning)."""
    model = copy.deepcopy(model)
    if rate > 0:
        params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=rate)
        for module, name in params:
            prune.remove(module, name)
    return model.eval()


@register_attack("pruning")
def pruning(ctx: AttackContext, rates: tuple[float, ...] | None = None) -> AttackResult:
    """Global magnitude pruning at rates 0-99 % (torch.nn.utils.prune), no retraining; A_ad and
    A_ud at each rate. The lock holds if A_ud stays within 5 points of its start at every rate
    where A_ad keeps at least 80 % of its start.

    Threat model: the attacker has the model's weights and hopes that the lock lives in weights
    that pruning removes first; no data, no token.
    """
    rates = rates or (
        (0.0, 0.5, 0.9)
        if ctx.fast
        else (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
    )
    a_ad, a_ud = [], []
    for rate in rates:
        model = pruned_copy(ctx.model, rate)
        a_ad.append(ctx.acc(ctx.authorized, model=ctx.unlock(model)))
        a_ud.append(ctx.acc(ctx.test_x, model=model))
    start_ad, start_ud = ctx.baseline["A_ad"], ctx.baseline["A_ud"]
    useful = [u for d, u in zip(a_ad, a_ud, strict=True) if d >= 0.8 * start_ad]
    worst_leak = max((u - start_ud for u in useful), default=0.0)
    metrics = {f"A_ad_{r:g}": d for r, d in zip(rates, a_ad, strict=True)}
    metrics.update({f"A_ud_{r:g}": u for r, u in zip(rates, a_ud, strict=True)})
    metrics.update(max_A_ud_rise_while_useful=worst_leak, max_A_ud=max(a_ud))
    return AttackResult(
        metrics,
        target="A_ud within 5 points of its start wherever A_ad >= 80 % of its start",
        verdict="holds" if worst_leak <= 5 else "broken",
        curve={
            "x": "pruning rate",
            "x_values": list(rates),
            "series": {"A_ad": a_ad, "A_ud": a_ud},
        },
        params={"rates": list(rates)},
    )
