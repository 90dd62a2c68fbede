"""Run attacks against a protected run and write attacks.json, figures and report.html."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from activedaemon.attacks.base import (
    ATTACKS,
    AttackContext,
    list_attacks,
    not_applicable,
    run_attack,
)
from activedaemon.attacks.figures import save_curve
from activedaemon.data import load_dataset
from activedaemon.protect.checkpoint import load_protected
from activedaemon.runs import git_commit, run_record, write_json

log = logging.getLogger(__name__)


def load_context(
    model_run: str | Path,
    encoder: str | Path | None = None,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    limit_test: int | None = 2000,
    seed: int = 0,
    fast: bool = False,
    out: str | Path | None = None,
    progress: bool = False,
    force_encoder: bool = False,
) -> AttackContext:
    """An AttackContext for a protected run folder and an encoder (run folder or shipped name;
    default: the one on the model's card); the data set defaults to the model's own."""
    model, gen = load_protected(model_run, encoder, force=force_encoder)
    card = model.card
    data = load_dataset(
        dataset or card["dataset"],
        data_root,
        size=card["image_size"],
        channels=card["channels"],
        limit_test=limit_test,
        grey_view=True,  # the train split is sampled by attacker_data, never held as RGB
    )
    data.test.images = data.test.images.contiguous()  # attacks may write into their queries
    return AttackContext(model, gen, data, seed=seed, fast=fast, out=out, progress=progress)


def run_suite(
    ctx: AttackContext,
    names: list[str] | None = None,
    params: dict[str, dict] | None = None,
    config: dict | None = None,
) -> dict:
    """Run ``names`` (default: every attack that applies to ``ctx``) with ``params``
    {attack: {key: value}}; with ``ctx.out``, write attacks.json, one curve figure per attack
    that has a curve, and report.html, under a run record (``config`` adds to what it records:
    the model, the encoder). Unknown or inapplicable names are refused before any attack runs.
    Returns the results dict."""
    names = names or [n for n in list_attacks() if not not_applicable(n, ctx)]
    ATTACKS.check(names)
    refused = {n: why for n in names if (why := not_applicable(n, ctx))}
    if refused:
        raise ValueError(
            "; ".join(f"attack {n!r} does not apply: it {w}" for n, w in refused.items())
        )
    record_config = {**(config or {}), "attacks": names, "params": params or {}, "fast": ctx.fast}
    record = (
        run_record(ctx.out, "attack", record_config, ctx.seed)
        if ctx.out is not None
        else contextlib.nullcontext()
    )
    with record as rec:
        results = _run_attacks(ctx, names, params or {})
        if rec is not None:
            rec.metrics = {n: r["metrics"] for n, r in results["attacks"].items()}
    return results


def _run_attacks(ctx: AttackContext, names: list[str], params: dict[str, dict]) -> dict:
    started = time.time()
    results = {
        "seed": ctx.seed,
        "fast": ctx.fast,
        "commit": git_commit(),
        "dataset": ctx.data.name,
        "test_images": len(ctx.test_y),
        "baseline": ctx.baseline,
        "token_budget": ctx.token_budget,
        "attacks": {},
    }
    for name in names:
        result = run_attack(name, ctx, **params.get(name, {}))
        if ctx.out is not None and result.curve:
            result.figures.insert(0, str(save_curve(result, ctx.out / f"{name}.png")))
        log.info("%s: %s (%.0f s)", name, result.verdict, result.seconds)
        results["attacks"][name] = result.to_dict()
        if ctx.out is not None:  # what finished survives a crash of a later attack
            write_json(ctx.out / "attacks.json", results)
    results["seconds"] = round(time.time() - started, 1)
    if ctx.out is not None:
        from activedaemon.evaluate.report import write_attack_report

        write_json(ctx.out / "attacks.json", results)
        write_attack_report(results, ctx.out / "report.html")
    return results
