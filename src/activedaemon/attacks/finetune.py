"""Fine-tuning attacks (Table VI): retrain the stolen model on a little labelled data, or
transfer it to another task."""

from __future__ import annotations

import torch

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack
from activedaemon.attacks.reverse import attacker_data
from activedaemon.attacks.training import copy_with_head, fit, fresh_like
from activedaemon.data import load_dataset
from activedaemon.data.datasets import DatasetNotFoundError
from activedaemon.metrics import accuracy


@register_attack("finetune", needs={"attacker_data"})
def finetune(
    ctx: AttackContext, percents: tuple[float, ...] | None = None, epochs: int | None = None
) -> AttackResult:
    """Fine-tune all layers of the protected model on p % of the labelled clean training data
    for E epochs; A_ad and A_ud after, beside a model of the same architecture trained from
    scratch on the same data (what the attacker gets without stealing).

    Threat model: the attacker has the model's weights and p % of the labelled training data,
    and no token.
    """
    percents = percents or ((2.0,) if ctx.fast else (1.0, 5.0, 10.0))
    epochs = epochs or (1 if ctx.fast else 5)
    metrics: dict = {}
    a_ad, a_ud, scratch = [], [], []
    for p in percents:
        x, y = attacker_data(ctx, max(2, int(len(ctx.data.train) * p / 100)))
        tuned = fit(
            copy_with_head(ctx.model),
            x,
            y,
            epochs=epochs,
            lr=0.01,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        a_ad.append(ctx.acc(ctx.authorized, model=ctx.unlock(tuned)))
        a_ud.append(ctx.acc(ctx.test_x, model=tuned))
        base = fit(
            fresh_like(ctx.model),
            x,
            y,
            epochs=epochs,
            lr=0.05,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        scratch.append(ctx.acc(ctx.test_x, model=base))
        metrics.update(
            {f"A_ad_p{p:g}": a_ad[-1], f"A_ud_p{p:g}": a_ud[-1], f"scratch_p{p:g}": scratch[-1]}
        )
    gain = max(u - s for u, s in zip(a_ud, scratch, strict=True))
    metrics["max_gain_over_scratch"] = gain
    return AttackResult(
        metrics,
        target="fine-tuned A_ud no better than training from scratch on the same data (+5)",
        verdict="holds" if gain <= 5 else "broken",
        curve={
            "x": "labelled clean training data (%)",
            "x_values": list(percents),
            "series": {"A_ad after": a_ad, "A_ud after": a_ud, "from scratch (clean)": scratch},
        },
        params={"percents": list(percents), "epochs": epochs},
    )


TRANSFER_CANDIDATES = ("mnist", "cifar10", "svhn", "gtsrb")


def _transfer_task(ctx: AttackContext, dataset: str | None, limit: int):
    """(name, train split, test split, classes): the named data set, else the first of
    TRANSFER_CANDIDATES found on disk, else the same images under a new random labelling."""
    card = ctx.model.card
    size, channels = card["image_size"], card["channels"]
    for name in (dataset,) if dataset else TRANSFER_CANDIDATES:
        try:
            data = load_dataset(
                name, size=size, channels=channels, limit_train=limit, limit_test=len(ctx.test_y)
            )
            return name, data.train, data.test, data.num_classes
        except DatasetNotFoundError:
            if dataset:
                raise
    perm = torch.randperm(ctx.data.num_classes, generator=ctx.generator(5))
    x, y = attacker_data(ctx, limit)
    name = f"{ctx.data.name} with permuted labels (no other data set on disk)"
    return name, (x, perm[y]), (ctx.test_x, perm[ctx.test_y]), ctx.data.num_classes


@register_attack("transfer", needs={"encoder"})
def transfer(
    ctx: AttackContext,
    dataset: str | None = None,
    images: int | None = None,
    epochs: int | None = None,
) -> AttackResult:
    """Transfer the protected model to another task: new last layer, fine-tune all layers on
    the new task's data, then measure the new task's test accuracy with tokens (A_ad) and
    without (A_ud), beside the same architecture trained from scratch. The new task is
    ``dataset`` or the first data set on disk among mnist, cifar10, svhn, gtsrb; where none is,
    the same images under a random relabelling (said in the notes).

    Threat model: the attacker has the model's weights and labelled data of another task, and
    wants a working model for that task more cheaply than from scratch; no token.
    """
    n = images or (512 if ctx.fast else 6000)
    epochs = epochs or (1 if ctx.fast else 5)
    name, train, test, classes = _transfer_task(ctx, dataset, n)
    (x, y), (tx, ty) = (
        (s if isinstance(s, tuple) else (s.images, s.labels)) for s in (train, test)
    )
    tuned = fit(copy_with_head(ctx.model, classes), x, y, epochs=epochs, lr=0.01, seed=ctx.seed)
    scratch = fit(fresh_like(ctx.model, classes), x, y, epochs=epochs, lr=0.05, seed=ctx.seed)
    authorized = ctx.encoder.embed(tx, ctx.user_ids[: len(ty)])
    metrics = {
        "transfer_A_ad": accuracy(tuned, authorized, ty),
        "transfer_A_ud": accuracy(tuned, tx, ty),
        "scratch": accuracy(scratch, tx, ty),
    }
    return AttackResult(
        metrics,
        params={"task": name, "images": n, "epochs": epochs},
        notes=[f"new task: {name}"],
    )
