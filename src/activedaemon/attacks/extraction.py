"""Model extraction (Table V): a copycat substitute trained on the protected model's answers."""

from __future__ import annotations

import torch

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack
from activedaemon.attacks.reverse import attacker_data
from activedaemon.attacks.training import fit, fresh_like
from activedaemon.metrics import accuracy


def _labels_from(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x in images.split(512)])


@register_attack("extraction", needs={"attacker_data"})
def extraction(
    ctx: AttackContext, queries: int | None = None, epochs: int | None = None
) -> AttackResult:
    """Copycat extraction (Correia-Silva et al.): N unlabelled clean images are sent to the
    protected model, its top-1 answers become labels, and a substitute of the same architecture
    is trained on them. Insider case: the queries carry a valid user's token, so the answers are
    right; the substitute is then measured on clean images. Substitute accuracy on the clean test
    images (and on authorized ones).

    Threat model: black-box query access with top-1 answers and unlabelled in-distribution
    images; the outsider has no token, the insider is a registered user who makes valid tokens.
    """
    n = queries or (256 if ctx.fast else 2500)
    epochs = epochs or (2 if ctx.fast else 15)
    x, _ = attacker_data(ctx, n)
    metrics = {}
    for case, queries_x, oracle in (
        ("outsider", x, ctx.model),
        ("insider", ctx.authorize(x, ctx.user_ids[0]), ctx.unlock(ctx.model)),
    ):
        answers = _labels_from(oracle, queries_x)
        substitute = fit(
            fresh_like(ctx.model),
            queries_x,
            answers,
            epochs=epochs,
            lr=0.05,
            seed=ctx.seed,
            progress=ctx.progress,
            desc=f"copycat ({case})",
        )
        metrics[f"substitute_{case}_clean"] = accuracy(substitute, ctx.test_x, ctx.test_y)
        metrics[f"substitute_{case}_authorized"] = accuracy(substitute, ctx.authorized, ctx.test_y)
    a_ud = ctx.baseline["A_ud"]
    outsider = metrics["substitute_outsider_clean"]
    return AttackResult(
        metrics,
        target=f"outsider substitute on clean images within 5 points of A_ud ({a_ud:.2f})",
        verdict="holds" if abs(outsider - a_ud) <= 5 else "broken",
        params={"queries": n, "epochs": epochs},
        notes=[
            "The insider substitute is not stopped by the lock: a registered user receives right "
            "answers by design. Rate limits and the audit log of the service are the defence."
        ],
    )
