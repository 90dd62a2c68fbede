"""`activedaemon compare`: every scheme trained and measured on the same data, model and attacks
(Tables I, III, X; Figs. 3, 7/8). One clean baseline gives A_or for all.

Per scheme: A_ad (authorized: token / patch on the image, or the right key), A_ud (clean images
on the model as someone without the key holds it), A_od = A_ad - A_or, A_pd = A_ad - A_ud, A_fk
(a forged key: Gaussian fake tokens of the real tokens' L2 for input keys, a random passport or
wrong chaotic key for weight keys), PSNR / SSIM / ERGAS of authorized vs clean images where the
scheme changes images, parameters and FLOPs, and the attacks of the suite that apply.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

from activedaemon.attacks.base import AttackContext, run_attack
from activedaemon.data import load_dataset
from activedaemon.metrics import image_quality
from activedaemon.protect.train import (
    ProtectConfig,
    accuracy,
    load_classifier,
    load_preset,
    train_classifier,
)
from activedaemon.runs import finish_run, git_commit, start_run, write_json
from activedaemon.schemes.base import count_params_flops, create_scheme

log = logging.getLogger(__name__)

DEFAULT_SCHEMES = ("activedaemon", "mlock", "adip", "passport", "chaow")
DEFAULT_ATTACKS = ("pruning", "gaussian", "finetune", "extraction")
COLUMNS = (
    "scheme", "key_in", "A_or", "A_ad", "A_ud", "A_od", "A_pd", "A_fk", "psnr", "ssim", "ergas",
    "lpips", "params", "key_params", "flops", "train_seconds",
)  # fmt: skip


def compare_config(
    dataset: str, preset: str, fast: bool, seed: int, overrides: dict | None
) -> ProtectConfig:
    """The preset's protection config; ``fast`` shrinks it with the tiny preset (seconds)."""
    values = load_preset(preset)
    if fast:
        values.update(load_preset("tiny"))
    values.update(overrides or {})
    values.update(dataset=dataset, seed=seed)
    return ProtectConfig.from_dict(values)


def measure(
    scheme,
    ctx: AttackContext,
    a_or: float,
    attacks: tuple[str, ...],
    attack_params: dict[str, dict] | None = None,
) -> dict:
    """One scheme's row and its attack results (skipped attacks with the reason);
    ``attack_params`` caps attacks by name (e.g. {"extraction": {"queries": 1000}})."""
    base = ctx.baseline
    row = {"scheme": scheme.name, "key_in": scheme.key_in, "A_or": a_or, **base}
    row.update(A_od=base["A_ad"] - a_or, A_pd=base["A_ad"] - base["A_ud"])
    extra = scheme.extra_metrics(ctx)
    if scheme.changes_images:
        q = image_quality(ctx.authorized, ctx.test_x)
        row.update({k: q[k] for k in ("psnr", "ssim", "ergas", "lpips")})
        if q["lpips"] is None:
            extra["lpips_reason"] = q["lpips_reason"]
    else:
        row.update(psnr=None, ssim=None, ergas=None, lpips=None)
    row.update(scheme.params_flops(tuple(ctx.test_x.shape[1:])))
    results, skipped = {}, {}
    for name in attacks:
        if name in scheme.not_applicable:
            skipped[name] = scheme.not_applicable[name]
            continue
        results[name] = run_attack(name, ctx, **(attack_params or {}).get(name, {})).to_dict()
        log.info("%s / %s: %s", scheme.name, name, results[name]["verdict"])
    forged = scheme.forged(ctx.seed + 1)
    if forged is not None:
        row["A_fk"] = ctx.acc(ctx.test_x, model=forged)
    elif "gaussian" in results:
        row["A_fk"] = results["gaussian"]["metrics"]["A_td_gaussian_l2"]
    else:
        row["A_fk"] = None
    return {
        "row": row,
        "extra": extra,
        "not_applicable": dict(scheme.not_applicable),
        "attacks": results,
        "skipped": skipped,
    }


def run_compare(
    out: str | Path,
    schemes: list[str] | tuple[str, ...] = DEFAULT_SCHEMES,
    dataset: str = "fashion-mnist",
    preset: str = "cpu-small",
    fast: bool = False,
    seed: int = 0,
    overrides: dict | None = None,
    limit_test: int | None = 2000,
    attacks: tuple[str, ...] = DEFAULT_ATTACKS,
    scheme_options: dict[str, dict] | None = None,
    attack_params: dict[str, dict] | None = None,
    progress: bool = False,
) -> dict:
    """Train the clean baseline and every scheme under ``out``, measure them, and write
    compare.json, compare.csv, report.html, samples.png and pruning.png. Returns the results."""
    cfg = compare_config(dataset, preset, fast, seed, overrides)
    limit_test = cfg.limit_test if fast else limit_test
    config = {
        "schemes": list(schemes), "attacks": list(attacks), "preset": preset, "fast": fast,
        "limit_test": limit_test, "scheme_options": scheme_options or {},
        "attack_params": attack_params or {}, "protect": asdict(cfg),
    }  # fmt: skip
    out = start_run(out, "compare", config, seed)
    started = time.time()
    clean_run = train_classifier(replace(cfg, protected=False), out / "clean", progress)
    data = load_dataset(
        cfg.dataset, cfg.data_root, size=cfg.image_size, channels=cfg.channels,
        limit_train=cfg.limit_train, limit_test=limit_test,
    )  # fmt: skip
    clean = load_classifier(clean_run)
    a_or = accuracy(clean, data.test.images, data.test.labels)
    clean_row = {"scheme": "none (clean)", "A_or": a_or, "A_ud": a_or, "key_params": 0}
    clean_row.update(count_params_flops(clean, tuple(data.test.images.shape[1:])))
    results = {
        "seed": seed, "commit": git_commit(), "dataset": cfg.dataset, "preset": preset,
        "fast": fast, "test_images": len(data.test), "A_or": a_or, "clean": clean_row,
        "schemes": {},
    }  # fmt: skip
    contexts = {}
    for name in schemes:
        scheme = create_scheme(name, **(scheme_options or {}).get(name, {}))
        t0 = time.time()
        scheme.train(cfg, out / name, clean_run=clean_run, progress=progress)
        train_seconds = round(time.time() - t0, 1)
        ctx = AttackContext(
            scheme.deployed(), getattr(scheme, "encoder", None), data, seed=seed, fast=fast,
            out=out / name / "attacks", authorize=scheme.authorize, unlock=scheme.unlock,
        )  # fmt: skip
        entry = measure(scheme, ctx, a_or, attacks, attack_params)
        entry["row"]["train_seconds"] = train_seconds
        results["schemes"][name] = entry
        contexts[name] = ctx
        write_json(out / "compare.json", results)  # what finished survives a later crash
    results["seconds"] = round(time.time() - started, 1)
    from activedaemon.schemes.report import write_compare_outputs

    results["outputs"] = write_compare_outputs(results, contexts, out)
    write_json(out / "compare.json", results)
    finish_run(out, {n: e["row"] for n, e in results["schemes"].items()}, A_or=a_or)
    return results
