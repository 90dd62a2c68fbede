"""Reverse-engineered tokens (Fig. 5): optimise a wake-up key from clean labelled data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack, wake_verdict
from activedaemon.imageio import round_8bit, take_rows
from activedaemon.protect.adversarial import search_key


def attacker_data(ctx: AttackContext, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n clean labelled training images (the attacker's own data), drawn with the seed."""
    idx = torch.randperm(len(ctx.data.train), generator=ctx.generator(11))[:n]
    # A copy of the rows only (the split may be a grey image viewed as RGB).
    return take_rows(ctx.data.train.images, idx).contiguous(), ctx.data.train.labels[idx]


def universal_perturbation(
    model,
    x,
    y,
    *,
    linf: float,
    l2: float,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    progress: bool = False,
) -> torch.Tensor:
    """One additive perturbation, within (linf, l2), that maximises the accuracy of ``model`` on
    (x, y): Adam on the cross-entropy to the true labels, projected after each step."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.eval()

    def loss_of(delta: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(x), (batch,), generator=gen)
        xb, yb = x[idx].to(device), y[idx].to(device)
        return F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)

    start = torch.zeros((1, *x.shape[1:]), device=device)
    return search_key(
        start,
        loss_of,
        linf=linf,
        l2=l2,
        steps=steps,
        lr=lr,
        progress="universal perturbation" if progress else None,
    ).cpu()


def neural_cleanse(model, x, y, steps: int, lam: float, batch: int, seed: int, progress):
    """Neural-Cleanse-style mask m and pattern p, x' = (1 - m) x + m p, that maximise accuracy on
    (x, y) with an L1 penalty ``lam`` on the mask (Wang et al., S&P 2019, untargeted here: the
    'target' is each sample's true label)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    _, c, h, w = x.shape
    mask_logit = torch.full((1, 1, h, w), -3.0, device=device, requires_grad=True)
    pattern_logit = torch.zeros((1, c, h, w), device=device, requires_grad=True)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=0.1)
    model.eval()
    for _ in tqdm(range(steps), desc="neural cleanse", disable=not progress):
        idx = torch.randint(len(x), (batch,), generator=gen)
        m, p = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        xb, yb = x[idx].to(device), y[idx].to(device)
        loss = F.cross_entropy(model((1 - m) * xb + m * p), yb) + lam * m.mean()
        # gradients for the mask and pattern only, never the weights
        mask_logit.grad, pattern_logit.grad = torch.autograd.grad(loss, [mask_logit, pattern_logit])
        opt.step()
    return torch.sigmoid(mask_logit).detach().cpu(), torch.sigmoid(pattern_logit).detach().cpu()


@register_attack("reverse", needs={"decoder", "attacker_data"})
def reverse(
    ctx: AttackContext,
    steps: int | None = None,
    images: int | None = None,
    budget_scales: tuple[float, ...] | None = None,
    nc_lambda: float = 0.01,
) -> AttackResult:
    """Reverse-engineered tokens: (a) a universal additive perturbation inside the real tokens'
    L-inf and L2 size (median over test tokens), scaled by 0.5/1/2, found by Adam on the
    cross-entropy to the true labels; (b) a Neural-Cleanse mask + pattern with an L1 penalty on
    the mask. Both are fitted on the attacker's clean training images and measured on the test
    images. The verdict uses the best of (a) at budgets up to 1x and (b).

    Also reported: how many images with the key read as some user id (a service that checks
    ids refuses the rest).

    Threat model: the attacker has the model's weights (white box) and clean labelled data from
    the training distribution, but no token, no authorized image and no encoder.
    """
    steps = steps or (30 if ctx.fast else 300)
    n = images or (256 if ctx.fast else 2000)
    scales = budget_scales or ((1.0,) if ctx.fast else (0.5, 1.0, 2.0))
    x, y = attacker_data(ctx, n)
    budget = ctx.token_budget
    uap_acc, deltas = [], {}
    for scale in scales:
        delta = universal_perturbation(
            ctx.model,
            x,
            y,
            linf=scale * budget["linf"],
            l2=scale * budget["l2"],
            steps=steps,
            lr=budget["linf"] / 10,
            batch=128,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        deltas[scale] = delta
        uap_acc.append(ctx.acc(ctx.test_x + delta))
    mask, pattern = neural_cleanse(ctx.model, x, y, steps, nc_lambda, 128, ctx.seed, ctx.progress)
    nc_images = (1 - mask) * ctx.test_x + mask * pattern
    nc_acc = ctx.acc(nc_images)
    # Any budget up to the real token's size counts against the lock.
    within = [a for sc, a in zip(scales, uap_acc, strict=True) if sc <= 1.0]
    best_uap = max(within) if within else None
    best = max(a for a in (best_uap, nc_acc) if a is not None)
    target, verdict = wake_verdict(best, ctx, "half")
    nc_delta = (nc_images - ctx.test_x).flatten(1)
    key = deltas.get(1.0, deltas[scales[-1]])
    read = ctx.encoder.identify(round_8bit((ctx.test_x + key).clamp(0, 1)))
    metrics = {
        "universal_within_token_budget": best_uap,
        "neural_cleanse": nc_acc,
        "neural_cleanse_mask_l1": mask.mean().item(),
        "neural_cleanse_l2_over_token_l2": nc_delta.norm(dim=1).median().item() / budget["l2"],
        "best_accuracy": best,
        "universal_reads_as_an_id_pct": 100 * sum(r is not None for r in read) / len(read),
        "token_linf": budget["linf"],
        "token_l2": budget["l2"],
    }
    metrics.update({f"universal_x{s:g}": a for s, a in zip(scales, uap_acc, strict=True)})
    result = AttackResult(
        metrics,
        target,
        verdict,
        curve={
            "x": "perturbation budget (x real token's L-inf and L2)",
            "x_values": list(scales),
            "series": {"universal perturbation accuracy": uap_acc},
        },
        params={"steps": steps, "images": n, "nc_lambda": nc_lambda},
    )
    if ctx.out is not None:
        from activedaemon.attacks.figures import save_image_rows

        k = 8
        path = save_image_rows(
            {
                "clean": ctx.test_x[:k],
                "authorized": ctx.authorized[:k],
                "universal perturbation": (ctx.test_x[:k] + key).clamp(0, 1),
                "neural cleanse": nc_images[:k],
            },
            ctx.out / "reverse_samples.png",
        )
        result.figures.append(str(path))
    return result
