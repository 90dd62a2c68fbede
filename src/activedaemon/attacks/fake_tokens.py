"""Attacks with tokens that are not the real token of this image: Gaussian fakes (Table IV),
deteriorated tokens (Fig. 4), and tokens made for another image (Table VII)."""

from __future__ import annotations

import torch

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack, wake_verdict
from activedaemon.metrics import gaussian_fake_tokens


@register_attack("gaussian", needs={"input_key"})
def gaussian(ctx: AttackContext) -> AttackResult:
    """Gaussian noise in place of the token, scaled to each real token's L2 norm, and also
    clipped to its L-inf size (Table IV).

    Threat model: the attacker has the protected model (or its API) and knows how large tokens
    are, but has no token and no encoder.
    """
    acc = {
        "A_td_gaussian_l2": ctx.acc(ctx.test_x + gaussian_fake_tokens(ctx.tokens, ctx.seed)),
        "A_td_gaussian_l2_linf": ctx.acc(
            ctx.test_x + gaussian_fake_tokens(ctx.tokens, ctx.seed, match_linf=True)
        ),
    }
    best = max(acc.values())
    target, verdict = wake_verdict(best, ctx, "chance")
    return AttackResult({**acc, "best_accuracy": best}, target, verdict)


@register_attack("deteriorated", needs={"decoder", "input_key"})
def deteriorated(ctx: AttackContext, steps: int | None = None) -> AttackResult:
    """Deteriorated tokens (Fig. 4): keep a random fraction gamma_f of the token's pixels,
    gamma_f from 0 to 1; and the authors' variant, a centred square crop of the authorized image
    (side fraction gamma_f) pasted on the clean one.

    Threat model: the attacker holds authorized images and tries partial tokens (e.g. a damaged
    copy, or a crop of an authorized image).
    """
    steps = steps or (5 if ctx.fast else 11)
    fractions = torch.linspace(0, 1, steps).tolist()
    _, _, h, w = ctx.test_x.shape
    gen = ctx.generator(7)
    kept, pasted, decoded = [], [], []
    for frac in fractions:
        mask = (torch.rand((len(ctx.test_y), 1, h, w), generator=gen) < frac).float()
        partial = (ctx.test_x + mask * ctx.tokens).clamp(0, 1)
        kept.append(ctx.acc(partial))
        decoded.append(ctx.decode_rate(partial))
        side_h, side_w = round(frac * h), round(frac * w)
        top, left = (h - side_h) // 2, (w - side_w) // 2
        crop = ctx.test_x.clone()
        crop[:, :, top : top + side_h, left : left + side_w] = ctx.authorized[
            :, :, top : top + side_h, left : left + side_w
        ]
        pasted.append(ctx.acc(crop))
    # Wake attempts are the partial tokens strictly between none and all of the token.
    inner = [a for f, a in zip(fractions * 2, kept + pasted, strict=True) if 0 < f < 1]
    metrics = {
        "A_at_gamma_f_0": kept[0],
        "A_at_gamma_f_1": kept[-1],
        "A_at_gamma_f_0.5": kept[len(kept) // 2],
        "best_partial_accuracy": max(inner) if inner else None,
    }
    return AttackResult(
        metrics,
        target="accuracy falls smoothly from A_ad to A_ud as gamma_f goes 1 -> 0 (Fig. 4)",
        curve={
            "x": "gamma_f (fraction of token pixels kept / crop side)",
            "x_values": fractions,
            "series": {
                "token pixels kept": kept,
                "authorized crop pasted": pasted,
                "exact id decoded (%)": decoded,
            },
        },
    )


@register_attack("mismatched", needs={"encoder"})
def mismatched(ctx: AttackContext) -> AttackResult:
    """The token made for another image x' added to x (Table VII): with a random user per image,
    and with the same user's token from another image.

    Threat model: the attacker holds authorized images (their own, or seen in transit) and moves
    their tokens onto new images; no encoder.
    """
    moved = (ctx.test_x + ctx.tokens.roll(1, dims=0)).clamp(0, 1)
    same_user = ctx.encoder.token(ctx.test_x.roll(1, dims=0), ctx.user_ids)
    acc = {
        "A_td_mismatched": ctx.acc(moved),
        "A_td_mismatched_same_user": ctx.acc(ctx.test_x + same_user),
    }
    decoded = ctx.decode_rate(moved, ctx.user_ids[-1:] + ctx.user_ids[:-1])
    best = max(acc.values())
    target, verdict = wake_verdict(best, ctx, "chance")
    return AttackResult(
        {**acc, "best_accuracy": best, "moved_token_decodes_pct": decoded},
        target,
        verdict,
        notes=[
            f"{decoded:.1f} % of moved tokens still decode to their user id: the decoder alone "
            "does not bind a token to its image; the model (and the service's optional "
            "image-bound MAC) must."
        ],
    )
