"""`activedaemon compare`: every scheme trained and measured on the same data, model and attacks
(Tables I, III, X; Figs. 3, 7/8). One clean baseline gives A_or for all.

Per scheme: A_ad (authorized: token / patch on the image, or the right key), A_ud (clean images
on the model as someone without the key holds it), A_od = A_ad - A_or, A_pd = A_ad - A_ud, A_fk
(a forged key: Gaussian fake tokens of the real tokens' L2 for input keys, a random passport or
wrong chaotic key for weight keys), PSNR / SSIM / ERGAS of authorized vs clean images where the
scheme changes images, parameters and FLOPs, and the attacks of the suite that apply.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import replace
from pathlib import Path

from activedaemon.attacks.base import AttackContext, not_applicable, run_attack
from activedaemon.metrics import accuracy, image_quality
from activedaemon.protect import train_classifier
from activedaemon.protect.checkpoint import load_classifier
from activedaemon.protect.config import ProtectConfig, resolve_config
from activedaemon.runs import finished_run, git_commit, read_json, run_record, write_json
from activedaemon.schemes.base import count_params_flops, create_scheme
from activedaemon.schemes.report import COLUMNS, write_compare_outputs

log = logging.getLogger(__name__)

DEFAULT_ATTACKS = ("pruning", "gaussian", "finetune", "extraction")
__all__ = ["COLUMNS", "DEFAULT_ATTACKS", "measure", "run_compare"]


def compare_config(
    dataset: str | None,
    preset: str,
    fast: bool,
    seed: int | None,
    overrides: dict | None,
    flags: dict | None = None,
) -> ProtectConfig:
    """The preset's protection config (``fast`` lays the tiny preset over it: seconds), then the
    flags (data set, seed, epochs, limits), then the ``--set`` ``overrides``: the one deep merge
    of protect.config."""
    flags = {**(flags or {}), "dataset": dataset, "seed": seed}
    presets = [preset, "tiny"] if fast else preset
    return resolve_config(presets, flags=flags, overrides=overrides)


def measure(
    scheme,
    ctx: AttackContext,
    a_or: float,
    attacks: tuple[str, ...],
    attack_params: dict[str, dict] | None = None,
) -> dict:
    """One scheme's row and its attack results (skipped attacks with the reason, asked of each
    attack: what it needs that the scheme lacks); ``attack_params`` caps attacks by name
    (e.g. {"extraction": {"queries": 1000}})."""
    from activedaemon.attacks import list_attacks

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
    inapplicable = {a: why for a in list_attacks() if (why := not_applicable(a, ctx))}
    results, skipped = {}, {}
    for name in attacks:
        if name in inapplicable:
            skipped[name] = inapplicable[name]
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
        "not_applicable": inapplicable,
        "attacks": results,
        "skipped": skipped,
    }


def _scheme_options(name: str, cfg: ProtectConfig, options: dict) -> dict:
    """The run's image size and channels go to schemes that take them (patch layouts)."""
    from activedaemon.schemes import SCHEMES

    takes = inspect.signature(SCHEMES[name]).parameters
    shape = {"image_size": cfg.image_size, "channels": cfg.channels}
    return {**{k: v for k, v in shape.items() if k in takes}, **options}


def _train_or_reuse(scheme, cfg: ProtectConfig, options: dict, out: Path, clean_run, progress):
    """Train ``scheme`` under ``out``, or load what an earlier run with the same config and
    options left there (a rerun of compare does not retrain). Returns training seconds."""
    marker = out / "scheme.json"
    key = {"scheme": scheme.name, "options": options, "protect": cfg}
    if finished_run(out / "scheme-record", key) and marker.is_file():
        saved = read_json(marker)
        scheme.load(saved["run"])
        log.info("%s: reusing %s", scheme.name, saved["run"])
        return saved["train_seconds"]
    with run_record(out / "scheme-record", "compare-scheme", key, cfg.seed) as rec:
        t0 = time.time()
        run = scheme.train(cfg, out, clean_run=clean_run, progress=progress)
        seconds = round(time.time() - t0, 1)
        write_json(marker, {"run": str(run), "train_seconds": seconds})
        rec.metrics = {"train_seconds": seconds}
    return seconds


def run_compare(
    out: str | Path,
    schemes: list[str] | tuple[str, ...] | None = None,
    *,
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
    flags: dict | None = None,
) -> dict:
    """Train the clean baseline and every scheme (default: every registered one) under ``out``
    (reusing finished runs of an earlier call with the same settings), measure them, and write
    compare.json, compare.csv, report.html, samples.png and pruning.png. ``flags`` (epochs,
    limit_train) lie under the ``--set`` ``overrides``. Returns the results."""
    from activedaemon.attacks import ATTACKS
    from activedaemon.schemes import SCHEMES

    schemes = list(schemes or SCHEMES.names())
    SCHEMES.check(schemes)
    ATTACKS.check(list(attacks))
    cfg = compare_config(dataset, preset, fast, seed, overrides, flags)
    limit_test = cfg.limit_test if fast else limit_test
    config = {
        "schemes": list(schemes),
        "attacks": list(attacks),
        "preset": preset,
        "fast": fast,
        "limit_test": limit_test,
        "scheme_options": scheme_options or {},
        "attack_params": attack_params or {},
        "protect": cfg,
    }
    with run_record(out, "compare", config, seed) as rec:
        out = rec.out
        started = time.time()
        clean_cfg = replace(cfg, protected=False)
        clean_run = out / "clean"
        if not finished_run(clean_run, clean_cfg):
            train_classifier(clean_cfg, clean_run, progress)
        data = cfg.load_data(limit_test=limit_test)
        clean = load_classifier(clean_run)
        a_or = accuracy(clean, data.test.images, data.test.labels)
        clean_row = {"scheme": "none (clean)", "A_or": a_or, "A_ud": a_or, "key_params": 0}
        clean_row.update(count_params_flops(clean, tuple(data.test.images.shape[1:])))
        results = {
            "seed": seed,
            "commit": git_commit(),
            "dataset": cfg.dataset,
            "preset": preset,
            "fast": fast,
            "test_images": len(data.test),
            "A_or": a_or,
            "clean": clean_row,
            "schemes": {},
        }
        contexts = {}
        for name in schemes:
            options = _scheme_options(name, cfg, (scheme_options or {}).get(name, {}))
            scheme = create_scheme(name, **options)
            seconds = _train_or_reuse(scheme, cfg, options, out / name, clean_run, progress)
            ctx = AttackContext(
                scheme.deployed(),
                getattr(scheme, "encoder", None),
                data,
                seed=seed,
                fast=fast,
                out=out / name / "attacks",
                authorize=scheme.authorize,
                unlock=scheme.unlock,
                key_in=scheme.key_in,
            )
            entry = measure(scheme, ctx, a_or, attacks, attack_params)
            entry["row"]["train_seconds"] = seconds
            results["schemes"][name] = entry
            contexts[name] = ctx
            write_json(out / "compare.json", results)  # what finished survives a later crash
        results["seconds"] = round(time.time() - started, 1)
        results["outputs"] = write_compare_outputs(results, contexts, out)
        write_json(out / "compare.json", results)
        rec.metrics = {"A_or": a_or, **{n: e["row"] for n, e in results["schemes"].items()}}
    return results
