"""The dormancy audit: what a thief without a token gets out of the stolen weights, each thief
beside the honest alternative measured in the same run (random weights of the same architecture,
or training from scratch on the same labels)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack
from activedaemon.attacks.reverse import attacker_data
from activedaemon.attacks.training import fit, fresh_like
from activedaemon.protect.models import StageTap, recalibrate_batchnorm, stage_names

GAIN_LIMIT = 3.0  # points a thief may gain over its honest alternative (issue target)


@torch.no_grad()
def stage_features(
    model: nn.Module,
    images: torch.Tensor,
    names: list[str],
    pools: tuple[int, ...] = (1,),
    bs: int = 500,
) -> dict[tuple[str, int], torch.Tensor]:
    """The outputs of the named stages for ``images`` (eval mode, one pass), each channel
    average-pooled to pool x pool for every pool, flattened: {(name, pool): (N, C * pool^2)}."""
    model.eval()
    device = next(model.parameters()).device
    tap = StageTap(model, names)
    feats: dict[tuple[str, int], list[torch.Tensor]] = {(n, p): [] for n in names for p in pools}
    try:
        for i in range(0, len(images), bs):
            model(images[i : i + bs].to(device))
            for n, p in feats:
                feats[n, p].append(F.adaptive_avg_pool2d(tap.outputs[n], p).flatten(1))
    finally:
        tap.close()
    return {key: torch.cat(v) for key, v in feats.items()}


@torch.no_grad()
def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    l2: float = 1e-3,
    iters: int = 200,
) -> float:
    """Accuracy (%) of a multinomial logistic regression (L-BFGS, L2 ``l2``) fitted on
    standardised features ``train_f`` and measured on ``test_f`` (on their device)."""
    device = train_f.device
    train_y, test_y = train_y.to(device), test_y.to(device)
    mean, std = train_f.mean(0), train_f.std(0).clamp(min=1e-6)
    a, b = (train_f - mean) / std, (test_f - mean) / std
    w = torch.zeros(a.shape[1], num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return 100.0 * ((b @ w + bias).argmax(1) == test_y).float().mean().item()


def dormant_class(logits: torch.Tensor) -> int:
    """The class the model gives most of these (clean) inputs: what a thief sees as dormancy."""
    return int(logits.argmax(1).mode().values)


@torch.no_grad()
def runner_up(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, int]:
    """The output-level leak: mask the class the model gives most often (the thief sees it on its
    own clean images, no labels needed), take the rest's ranking. Returns (% where the top of the
    rest is the true label, % where the true label is in the rest's top 3, the masked class)."""
    masked = dormant_class(logits)
    rest = logits.clone()
    rest[:, masked] = -math.inf
    top3 = rest.topk(3, dim=1).indices
    first = 100.0 * (top3[:, 0] == labels).float().mean().item()
    in3 = 100.0 * (top3 == labels[:, None]).any(1).float().mean().item()
    return first, in3, masked


def probe_all_stages(
    model: nn.Module,
    names: list[str],
    pools: tuple[int, ...],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
) -> dict[tuple[str, int], float]:
    """Linear-probe accuracy (%) at every stage and pooling, the backbone frozen."""
    tr = stage_features(model, train[0], names, pools)
    te = stage_features(model, test[0], names, pools)
    return {key: linear_probe(tr[key], train[1], te[key], test[1], num_classes) for key in tr}


def _row(thief: str, p: float, stage: str, acc: float, alt: str, alt_acc: float) -> dict:
    return {
        "thief": thief,
        "labels (%)": p,
        "stage": stage,
        "thief (%)": round(acc, 2),
        "alternative": alt,
        "alternative (%)": round(alt_acc, 2),
        "gain": round(acc - alt_acc, 2),
    }


def _best_probes(models: list[nn.Module], *args) -> dict[tuple[str, int], float]:
    """Per stage and pooling, the best probe accuracy over ``models`` (a network as it is and
    with its BatchNorm re-estimated: the thief and the alternative get the same tries)."""
    runs = [probe_all_stages(m, *args) for m in models]
    return {key: max(r[key] for r in runs) for key in runs[0]}


def best_fit(ctx: AttackContext, start: nn.Module, x, y, epochs: int, lrs) -> float:
    """Clean test accuracy (%) after training a copy of ``start`` on (x, y), best over ``lrs``."""
    return max(
        ctx.acc(
            ctx.test_x, model=fit(copy.deepcopy(start), x, y, epochs=epochs, lr=lr, seed=ctx.seed)
        )
        for lr in lrs
    )


def _runner_up_thieves(ctx: AttackContext, metrics: dict, notes: list) -> tuple[list, dict]:
    """The runner-up thief and its top 3 against chance: (table rows, gains)."""
    k = ctx.data.num_classes
    with torch.no_grad():
        device = next(ctx.model.parameters()).device
        logits = ctx.model(ctx.test_x.to(device)).cpu()
    first, in3, masked = runner_up(logits, ctx.test_y)
    metrics.update(runner_up=first, runner_up_top3=in3)
    notes.append(
        f"runner-up (class {masked} masked): right {first:.1f} % (chance {100 / k:.1f}), "
        f"true label in top 3 {in3:.1f} % (chance {300 / k:.1f})"
    )
    table = [
        _row("runner-up label", 0, "output", first, "chance", 100 / k),
        _row("true label in runner-up top 3", 0, "output", in3, "chance", 300 / k),
    ]
    return table, {"runner_up": first - 100 / k, "runner_up_top3": in3 - 300 / k}


@register_attack("dormancy", needs={"attacker_data"})
def dormancy(
    ctx: AttackContext,
    percents: tuple[float, ...] | None = None,
    pools: tuple[int, ...] = (1, 2),
    finetune_lrs: tuple[float, ...] = (0.01, 0.05),
    random_inits: int = 3,
    min_steps: int | None = None,
    epochs: int | None = None,
) -> AttackResult:
    """The dormancy audit. Thieves without a token, each beside its honest alternative measured
    in the same run:
    (1) runner-up label: mask the class the model gives most clean images and read the rest's
    ranking (alternative: chance, 1/K; the true label in the top 3: 3/K); the stolen model with
    its BatchNorm statistics re-estimated on the thief's p % images (labels unused), read at its
    output (alternative: chance);
    (2) linear probes on the frozen backbone at the output of every stage (channels average-pooled
    to 1x1 and to 2x2), trained on p % of the labelled training data; the thief also tries the
    stolen model with its BatchNorm statistics re-estimated on its own images and keeps the
    better per stage (alternative: the same probes, with the same two tries, on random weights of
    the same architecture, the best of ``random_inits`` draws: random probe accuracy varies by
    several points from draw to draw, and an honest user can draw again);
    (3) full fine-tuning on the same p % (alternative: the same architecture trained from scratch
    on the same data, epochs and steps); both sides get the best of the same learning rates.
    Every result says what the thief gains over its alternative; the verdict holds when no thief
    gains more than 3 points, the runner-up is right no more often than 1/K + 5 and the true
    label sits in its top 3 no more often than 3/K + 5. Probes and fine-tuning are measured on
    the clean test images.

    Threat model: the attacker holds the protected model's weights and p % of the labelled clean
    training data (p = 0 for the runner-up thief), and no token, no authorized image, no encoder.
    """
    percents = percents or ((2.0,) if ctx.fast else (0.2, 1.0, 10.0))
    min_steps = min_steps or (5 if ctx.fast else 100)
    epochs = epochs or (1 if ctx.fast else 5)
    lrs = finetune_lrs[:1] if ctx.fast else finetune_lrs
    k = ctx.data.num_classes
    names = stage_names(ctx.model)
    short = {n: n.rpartition(".")[2] for n in names}
    metrics: dict[str, float] = {}
    notes: list[str] = []

    table, gains = _runner_up_thieves(ctx, metrics, notes)

    randoms = []
    for i in range(random_inits):
        torch.manual_seed(ctx.seed + i)
        randoms.append(fresh_like(ctx.model))
    random_model = randoms[0]
    series: dict[str, list[float]] = {}
    for p in percents:
        n = max(2 * k, int(len(ctx.data.train) * p / 100))
        x, y = attacker_data(ctx, n)
        tag = f"p{p:g}"
        # The thief may re-estimate BatchNorm on its images; so may the random-weight baseline.
        stolen_bn = recalibrate_batchnorm(copy.deepcopy(ctx.model), x)
        random_bn = [recalibrate_batchnorm(copy.deepcopy(m), x) for m in randoms]
        # The same re-estimated model read at its output: no labels, no training, one pass.
        got = ctx.acc(ctx.test_x, model=stolen_bn)
        metrics[f"bn_output_{tag}"], gains[f"bn_output_{tag}"] = got, got - 100 / k
        table.append(_row("BatchNorm re-estimated, output", p, "output", got, "chance", 100 / k))
        args = (names, pools, (x, y), (ctx.test_x, ctx.test_y), k)
        thief = _best_probes([ctx.model, stolen_bn], *args)
        alt = _best_probes(randoms + random_bn, *args)
        for pool in pools:
            for name in names:
                key = f"probe_{short[name]}_pool{pool}_{tag}"
                got, base = thief[name, pool], alt[name, pool]
                metrics[key], metrics[f"random_{key}"] = got, base
                gains[key] = got - base
                thief_name = f"linear probe, pool {pool}x{pool}"
                table.append(_row(thief_name, p, short[name], got, "random weights", base))
        series[f"stolen, {p:g} % labels"] = [thief[n, pools[0]] for n in names]
        series[f"random weights, {p:g} % labels"] = [alt[n, pools[0]] for n in names]
        # Fine-tuning vs scratch, same data, epochs and steps; each side its best learning rate.
        ep = max(epochs, math.ceil(min_steps / math.ceil(n / 128)))
        tuned = best_fit(ctx, ctx.model, x, y, ep, lrs)
        scratch = best_fit(ctx, random_model, x, y, ep, lrs)
        metrics[f"finetune_{tag}"], metrics[f"scratch_{tag}"] = tuned, scratch
        gains[f"finetune_{tag}"] = tuned - scratch
        table.append(_row("full fine-tuning", p, "all", tuned, "from scratch", scratch))
        notes.append(
            f"{p:g} % labels ({n} images): fine-tuned {tuned:.1f} vs scratch {scratch:.1f} "
            f"({ep} epochs, lr best of {list(lrs)}); best probe gain over random weights "
            f"{max(v for g, v in gains.items() if g.startswith('probe') and g.endswith(tag)):+.1f}"
        )
    worst = max(gains, key=gains.get)
    metrics.update({f"gain_{g}": v for g, v in gains.items()})
    metrics["max_gain"] = gains[worst]
    passive = [v for g, v in gains.items() if not g.startswith("runner_up")]
    ok = max(passive) <= GAIN_LIMIT and gains["runner_up"] <= 5 and gains["runner_up_top3"] <= 5
    notes.insert(0, f"largest gain: {worst} {gains[worst]:+.1f} points over its alternative")
    return AttackResult(
        metrics,
        target=f"every thief within +{GAIN_LIMIT:g} of its alternative; runner-up <= 1/K + 5, "
        "top 3 <= 3/K + 5",
        verdict="holds" if ok else "broken",
        curve={
            "x": f"stage (linear probe, pool {pools[0]}x{pools[0]})",
            "x_values": [short[n] for n in names],
            "categorical": True,
            "series": series,
        },
        params={
            "percents": list(percents),
            "pools": list(pools),
            "finetune_lrs": list(lrs),
            "min_steps": min_steps,
            "random_inits": random_inits,
            "epochs": epochs,
        },
        notes=notes,
        table=table,
    )
