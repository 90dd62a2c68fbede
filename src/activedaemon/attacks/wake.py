"""Active thieves without a token: they search for an input change, or adapt the weights, that
wakes the stolen model, with no labels or few. Each beside its honest alternative in the same
run: chance for thieves with no labels, training from scratch or a nearest-neighbour classifier
on the same labelled images for the others, the same adaptation on random weights for
source-free adaptation.

The searches:
- per-query wake-up: each query is moved by normalised gradient steps inside an L2 ball of
  b x a real token's median L2 size towards a confident answer that is not the class the model
  gives most clean images (the dormant class, seen on the queries themselves);
- label-free universal key: one perturbation inside b x a token's L-inf and L2 size, trained by
  information maximisation on unlabelled images (confident per image, diverse over the batch,
  the loss of source-free domain adaptation, SHOT, Liang et al., ICML 2020);
- labelled universal key: the same perturbation trained by cross-entropy on p % of the labels;
- source-free adaptation (SHOT): the backbone fine-tuned on unlabelled images with information
  maximisation plus self-labelling from class centroids, the last layer frozen.
Every search keeps the best of its restarts by its own objective (no labels where it has none).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack
from activedaemon.attacks.dormancy import best_fit, dormant_class
from activedaemon.attacks.reverse import attacker_data, universal_perturbation
from activedaemon.attacks.training import fresh_like
from activedaemon.protect.adversarial import project_l2, search_key
from activedaemon.protect.objectives import information_maximisation

GAIN_LIMIT = 3.0  # points a few-label thief may gain over its honest alternative
LABEL_FREE_LIMIT = 10.0  # points a label-free thief may gain over A_ud


def _mask(logits: torch.Tensor, cls: int | None) -> torch.Tensor:
    if cls is None:
        return logits
    logits = logits.clone()
    logits[:, cls] = -1e4
    return logits


def per_query_wakeup(
    model: nn.Module,
    x: torch.Tensor,
    radius: float,
    *,
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
    batch: int = 125,  # queries searched at once: their activations are kept for the gradient
) -> torch.Tensor:
    """Each image of ``x`` moved inside an L2 ball of ``radius`` towards a confident answer that
    is not the dormant class: normalised gradient steps (2.5 x radius / steps each) on the
    cross-entropy to the best other class; restarts from random points of the ball, each image
    keeping the restart whose answer is most confident. No label is used."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = torch.cat([model(x[i : i + batch].to(device)) for i in range(0, len(x), batch)])
    # The dormant class is masked only where there is one (most clean answers fall on it).
    masked = dormant_class(clean)
    if (clean.argmax(1) == masked).float().mean() <= 0.5:
        masked = None
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(device)
        best, best_conf = xb.clone(), torch.full((len(xb),), -math.inf, device=device)
        for r in range(restarts):
            # The first restart starts at the query itself, the others at random points.
            u = torch.rand((), generator=gen).item() * radius if r else 0.0
            delta = project_l2(torch.randn(xb.shape, generator=gen).to(device) * 1e3, u)
            for _ in range(steps):
                delta.requires_grad_(True)
                logits = _mask(model((xb + delta).clamp(0, 1)), masked)
                loss = F.cross_entropy(logits, logits.argmax(1).detach())
                (g,) = torch.autograd.grad(loss, delta)
                norms = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
                delta = project_l2(delta.detach() - 2.5 * radius / steps * g / norms, radius)
            with torch.no_grad():
                moved = (xb + delta).clamp(0, 1)
                conf = _mask(model(moved), masked).softmax(1).max(1).values
                better = conf > best_conf
                best[better], best_conf[better] = moved[better], conf[better]
        out.append(best.cpu())
    return torch.cat(out)


def label_free_key(
    model: nn.Module,
    x: torch.Tensor,
    *,
    linf: float,
    l2: float,
    steps: int,
    restarts: int,
    seed: int,
    batch: int = 128,
) -> torch.Tensor:
    """One perturbation inside (linf, l2) trained by information maximisation on the unlabelled
    images ``x`` (Adam, projected after each step); the restart with the lowest loss on all of
    ``x`` is kept."""
    model.eval()
    device = next(model.parameters()).device
    best, best_loss = None, math.inf
    for r in range(restarts):
        gen = torch.Generator().manual_seed(seed + r)
        start = (torch.rand((1, *x.shape[1:]), generator=gen) * 2 - 1) * linf * (r > 0)

        def loss_of(delta: torch.Tensor, gen=gen) -> torch.Tensor:
            idx = torch.randint(len(x), (batch,), generator=gen)
            return information_maximisation(model((x[idx].to(device) + delta).clamp(0, 1)))

        delta = search_key(start.to(device), loss_of, linf=linf, l2=l2, steps=steps)
        with torch.no_grad():
            total = sum(
                information_maximisation(
                    model((x[i : i + 500].to(device) + delta).clamp(0, 1))
                ).item()
                * len(x[i : i + 500])
                for i in range(0, len(x), 500)
            ) / len(x)
        if total < best_loss:
            best, best_loss = delta.detach().cpu(), total
    return best


def _head(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) of ``x``: the input of the last linear layer."""
    seen = []
    hook = _head(model).register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return seen[0], logits


def shot_adapt(
    model: nn.Module, x: torch.Tensor, *, epochs: int, lr: float, seed: int, beta: float = 0.3
) -> nn.Module:
    """Source-free adaptation (SHOT): a copy of ``model`` whose backbone is fine-tuned on the
    unlabelled ``x`` by information maximisation plus ``beta`` x cross-entropy to pseudo-labels
    (nearest class centroid of the features, the centroids weighted by the predictions,
    refreshed every epoch); the last layer stays frozen."""
    model = copy.deepcopy(model)
    head = _head(model)
    for p in head.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for _ in range(epochs):
        model.eval()
        with torch.no_grad():
            parts = [_features(model, x[i : i + 500].to(device)) for i in range(0, len(x), 500)]
            feats, logits = [p[0] for p in parts], [p[1] for p in parts]
            f = F.normalize(torch.cat(feats), dim=1)
            p = torch.cat(logits).softmax(1)
            centroids = F.normalize(p.T @ f, dim=1)
            pseudo = (f @ centroids.T).argmax(1)
            for _ in range(1):  # SHOT's one refinement: centroids of the hard assignment
                onehot = F.one_hot(pseudo, p.shape[1]).float()
                centroids = F.normalize(onehot.T @ f, dim=1)
                pseudo = (f @ centroids.T).argmax(1)
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            if len(idx) < 2:
                continue
            logits = model(x[idx].to(device))
            loss = information_maximisation(logits) + beta * F.cross_entropy(logits, pseudo[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k=5
) -> float:
    """Accuracy (%) of a k-nearest-neighbour vote (cosine, raw pixels): the honest use of a few
    labelled images without any model."""
    a = F.normalize(train_x.flatten(1), dim=1)
    hits = 0
    for i in range(0, len(test_x), 500):
        b = F.normalize(test_x[i : i + 500].flatten(1), dim=1)
        nearest = (b @ a.T).topk(min(k, len(a)), dim=1).indices
        votes = F.one_hot(train_y[nearest], int(train_y.max()) + 1).sum(1)
        hits += (votes.argmax(1) == test_y[i : i + 500]).sum().item()
    return 100.0 * hits / len(test_x)


def scratch_accuracy(ctx: AttackContext, x, y, epochs: int, lrs) -> float:
    """Clean test accuracy (%) of the protected model's architecture trained from scratch on
    (x, y), best over ``lrs`` (the dormancy audit's fit); memoised on the context, so that every
    thief of a run that uses the same labelled images is measured against the same alternative."""
    key = ("scratch", len(x), epochs, tuple(lrs))
    if key not in ctx.memo:
        torch.manual_seed(ctx.seed)
        ctx.memo[key] = best_fit(ctx, fresh_like(ctx.model), x, y, epochs, lrs)
    return ctx.memo[key]


def _row(thief: str, labels: float, budget, acc: float, alt: str, alt_acc: float) -> dict:
    return {
        "thief": thief,
        "labels (%)": labels,
        "budget (x token)": budget,
        "thief (%)": round(acc, 2),
        "alternative": alt,
        "alternative (%)": round(alt_acc, 2),
        "gain": round(acc - alt_acc, 2),
    }


def _shot(ctx: AttackContext, free_x, epochs: int, lrs, metrics, gains, table) -> None:
    """Source-free adaptation of the stolen weights against the same on random weights (the
    best of the same learning rates each)."""
    torch.manual_seed(ctx.seed)
    starts = {"shot": ctx.model, "shot_random": fresh_like(ctx.model)}
    for key, start in starts.items():
        metrics[key] = max(
            ctx.acc(
                ctx.test_x, model=shot_adapt(start, free_x, epochs=epochs, lr=lr, seed=ctx.seed)
            )
            for lr in lrs
        )
    gains["shot"] = metrics["shot"] - metrics["shot_random"]
    table.append(
        _row(
            "source-free adaptation (SHOT)",
            0,
            None,
            metrics["shot"],
            "the same on random weights",
            metrics["shot_random"],
        )
    )


def _labelled_keys(ctx: AttackContext, percents, key_steps: int, lrs, metrics, gains, table):
    """The universal key trained by cross-entropy on p % of the labels (1 x a token's size)
    against the better of scratch training and a pixel kNN on the same labelled images."""
    k, budget = ctx.data.num_classes, ctx.token_budget
    for p in percents:
        n = max(2 * k, int(len(ctx.data.train) * p / 100))
        x, y = attacker_data(ctx, n)
        key = universal_perturbation(
            ctx.model,
            x,
            y,
            linf=budget["linf"],
            l2=budget["l2"],
            steps=key_steps,
            lr=budget["linf"] / 10,
            batch=128,
            seed=ctx.seed,
        )
        got = ctx.acc(ctx.test_x + key)
        epochs = max(1 if ctx.fast else 5, math.ceil((5 if ctx.fast else 100) / math.ceil(n / 128)))
        alt = max(
            scratch_accuracy(ctx, x, y, epochs, lrs), knn_accuracy(x, y, ctx.test_x, ctx.test_y)
        )
        tag = f"p{p:g}"
        metrics[f"labelled_key_{tag}"], metrics[f"scratch_or_knn_{tag}"] = got, alt
        gains[f"labelled_key_{tag}"] = got - alt
        table.append(_row("universal key, cross-entropy", p, 1.0, got, "scratch or kNN", alt))


@register_attack("wake", needs={"attacker_data"})
def wake(
    ctx: AttackContext,
    budgets: tuple[float, ...] | None = None,
    percents: tuple[float, ...] | None = None,
    steps: int | None = None,
    key_steps: int | None = None,
    restarts: int | None = None,
    unlabelled: int | None = None,
    queries: int | None = None,
    shot_epochs: int | None = None,
    finetune_lrs: tuple[float, ...] = (0.01, 0.05),
) -> AttackResult:
    """Active thieves without a token (module docstring): per-query wake-up and label-free
    universal key at 0.25 / 0.5 / 1 / 2 x a real token's size (the forging-cost curve), a
    universal key from 0.2 / 1 / 10 % of the labels (1 x budget) against the better of scratch
    training and a pixel kNN on the same labels, and source-free adaptation (SHOT) of the stolen
    weights against the same on random weights. The verdict holds when the per-query thief at
    0.5 x and the label-free key at 1 x stay within A_ud + 10, and the few-label thieves at 1 %
    and 10 % within +3 of their alternative.

    Threat model: the attacker has the protected model's weights (white box) and no token, no
    authorized image, no encoder; the per-query thief has nothing else, the label-free key and
    the adaptation thief have unlabelled training images, the labelled key p % of the labels.
    """
    budgets = budgets or ((0.5, 1.0) if ctx.fast else (0.25, 0.5, 1.0, 2.0))
    if percents is None:  # () skips the labelled key
        percents = (2.0,) if ctx.fast else (0.2, 1.0, 10.0)
    steps = steps or (5 if ctx.fast else 20)
    key_steps = key_steps or (30 if ctx.fast else 400)
    restarts = restarts or (1 if ctx.fast else 3)
    n_free = unlabelled or (256 if ctx.fast else 2000)
    n_queries = min(queries or (200 if ctx.fast else 1000), len(ctx.test_x))
    if shot_epochs is None:  # 0 skips source-free adaptation
        shot_epochs = 1 if ctx.fast else 10
    lrs = finetune_lrs[:1] if ctx.fast else finetune_lrs
    k = ctx.data.num_classes
    chance = 100.0 / k
    a_ud = ctx.baseline["A_ud"]
    budget = ctx.token_budget
    qx, qy = ctx.test_x[:n_queries], ctx.test_y[:n_queries]
    free_x, _ = attacker_data(ctx, n_free)
    metrics: dict[str, float] = {}
    table, gains, notes = [], {}, []

    per_query, keys = [], []
    for b in tqdm(budgets, desc="forging-cost curve", disable=not ctx.progress):
        moved = per_query_wakeup(
            ctx.model, qx, b * budget["l2"], steps=steps, restarts=restarts, seed=ctx.seed
        )
        per_query.append(ctx.acc(moved, qy))
        key = label_free_key(
            ctx.model,
            free_x,
            linf=b * budget["linf"],
            l2=b * budget["l2"],
            steps=key_steps,
            restarts=restarts,
            seed=ctx.seed,
        )
        keys.append(ctx.acc(ctx.test_x + key))
        for name, acc in (("per_query", per_query[-1]), ("label_free_key", keys[-1])):
            metrics[f"{name}_x{b:g}"] = acc
            if b <= 1:  # a larger change than a real token's is reported, not counted
                gains[f"{name}_x{b:g}"] = acc - chance
        table.append(_row("per-query wake-up", 0, b, per_query[-1], "chance", chance))
        table.append(_row("label-free universal key", 0, b, keys[-1], "chance", chance))

    _labelled_keys(ctx, percents, key_steps, lrs, metrics, gains, table)

    if shot_epochs:
        _shot(ctx, free_x, shot_epochs, lrs, metrics, gains, table)

    worst = max(gains, key=gains.get)
    metrics.update({f"gain_{g}": v for g, v in gains.items()})
    metrics["max_gain"] = gains[worst]
    half = min(budgets, key=lambda b: abs(b - 0.5))
    few = [v for g, v in gains.items() if g.startswith("labelled_key") and not g.endswith("p0.2")]
    ok = (
        metrics[f"per_query_x{half:g}"] <= a_ud + LABEL_FREE_LIMIT
        and metrics[f"label_free_key_x{max(b for b in budgets if b <= 1):g}"]
        <= a_ud + LABEL_FREE_LIMIT
        and all(v <= GAIN_LIMIT for v in few)
        and gains.get("shot", 0) <= GAIN_LIMIT
    )
    notes.append(f"largest gain: {worst} {gains[worst]:+.1f} points over its alternative")
    notes.append(
        "forging cost (x token size "
        + ", ".join(f"{b:g}" for b in budgets)
        + "): per-query "
        + " / ".join(f"{a:.1f}" for a in per_query)
        + " %, label-free key "
        + " / ".join(f"{a:.1f}" for a in keys)
        + f" % (A_ud {a_ud:.1f}, chance {chance:.1f})"
    )
    return AttackResult(
        metrics,
        target=f"per-query (0.5x) and label-free key (1x) <= A_ud + {LABEL_FREE_LIMIT:g}; "
        f"few-label thieves (1 %, 10 %) and SHOT within +{GAIN_LIMIT:g} of their alternative",
        verdict="holds" if ok else "broken",
        curve={
            "x": "forging budget (x real token's L2 and L-inf)",
            "x_values": list(budgets),
            "series": {"per-query wake-up": per_query, "label-free universal key": keys},
        },
        params={
            "budgets": list(budgets),
            "percents": list(percents),
            "steps": steps,
            "key_steps": key_steps,
            "restarts": restarts,
            "unlabelled": n_free,
            "queries": n_queries,
            "shot_epochs": shot_epochs,
            "finetune_lrs": list(lrs),
        },
        notes=notes,
        table=table,
    )
