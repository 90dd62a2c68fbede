"""A new attack in one file: does a global contrast change of a clean image wake the model?

Drop this file into ``src/activedaemon/attacks/`` (or name its module in
``$ACTIVEDAEMON_PLUGINS``) and ``activedaemon attack contrast --model RUN`` runs it; it also joins
``attack all``, the attack report and ``compare --attacks contrast``.
"""

from __future__ import annotations

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack, wake_verdict


@register_attack("contrast")  # needs=set(): only the model and clean test images
def contrast(ctx: AttackContext, factors: tuple[float, ...] | None = None) -> AttackResult:
    """Scale every clean test image's contrast around its mean and classify it.

    Threat model: the attacker has the protected model (or its API) and clean images, no token.
    """
    factors = factors or ((0.5, 1.5) if ctx.fast else (0.25, 0.5, 0.75, 1.25, 1.5, 2.0))
    mean = ctx.test_x.mean(dim=(1, 2, 3), keepdim=True)
    accs = [ctx.acc(mean + f * (ctx.test_x - mean)) for f in factors]
    target, verdict = wake_verdict(max(accs), ctx, "chance")
    return AttackResult(
        {"best_accuracy": max(accs)},
        target,
        verdict,
        curve={"x": "contrast factor", "x_values": list(factors), "series": {"accuracy": accs}},
    )
