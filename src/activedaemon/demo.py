"""The demo: encoder (shipped or trained), clean baseline (shipped or trained), protected model
(the recommended recipe, warm-started from the clean baseline), evaluation, the quick thief audit,
report."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from activedaemon.attacks.audit import thief_audit
from activedaemon.attacks.suite import load_context
from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.evaluate.report import thieves_section, write_report
from activedaemon.protect import train_classifier
from activedaemon.protect.config import ProtectConfig, resolve_config
from activedaemon.runs import (
    WEIGHTS_FILE,
    finished_run,
    release_freed_memory,
    run_record,
    write_json,
)
from activedaemon.tokens import TokenGenerator
from activedaemon.tokens.figures import save_sample_grid
from activedaemon.tokens.generator import is_shipped_encoder

CLEAN_PRESET = "cpu-small"
RECIPE = "cpu-recommended"
# The clean baseline the demo trains at its defaults, as `activedaemon demo` trained it (its
# run.json names the commit and command): the owner's existing model the recipe protects. Used
# only when its config is exactly the demo's, so a changed preset or flag trains a fresh one.
SHIPPED_CLEAN = Path(__file__).resolve().parent / "baselines" / "fashion-mnist-cpu-small"


def demo_config(
    protected: bool,
    encoder: str | Path | None = None,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    clean_run: str | Path | None = None,
) -> ProtectConfig:
    """The demo's clean config (cpu-small) or protected one (cpu-recommended, started from
    ``clean_run``; ``encoder`` None: the recipe's), with the demo's flags (the merge every
    command uses, protect.config)."""
    flags = {"seed": seed, "epochs": epochs, "limit_train": limit_train, "limit_test": limit_test}
    if not protected:
        return resolve_config(CLEAN_PRESET, flags=flags, fixed={"protected": False})
    flags.update(encoder=str(encoder) if encoder else None)
    flags.update(init_from=str(clean_run) if clean_run else None)
    return resolve_config(RECIPE, flags=flags, fixed={"protected": True})


def run_demo(
    out: str | Path = "demo",
    train_new_encoder: bool = False,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    progress: bool = True,
    train_clean: bool = False,
) -> dict:
    """Fashion-MNIST, CPU presets: writes OUT/ encoder/ (if trained), clean/ (cpu-small: the
    shipped baseline where its config is this run's, unless ``train_clean``), protected/
    (cpu-recommended, started from clean/), thieves.json, results.json, report.html,
    samples.png, under a run record. Returns the results."""
    config = {
        "train_new_encoder": train_new_encoder,
        "train_clean": train_clean,
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
    }
    with run_record(out, "demo", config, seed) as rec:
        results = _demo(
            rec.out, train_new_encoder, train_clean, epochs, limit_train, limit_test, seed, progress
        )
        rec.metrics = {k: v for k, v in results.items() if k != "per_user"}
    return results


def shipped_clean_baseline(out: Path, cfg: ProtectConfig) -> str | None:
    """Copy the shipped clean baseline to ``out`` if it was trained with exactly ``cfg`` and
    ``out`` holds no finished run of it; returns where it came from, or None (train it)."""
    if finished_run(out, cfg) or not finished_run(SHIPPED_CLEAN, cfg):
        return None
    shutil.copytree(SHIPPED_CLEAN, out, dirs_exist_ok=True)
    made_by = json.loads((SHIPPED_CLEAN / "run.json").read_text())["commit"][:7]
    sha = hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    return f"shipped ({SHIPPED_CLEAN.name}, trained by `activedaemon demo` at {made_by}, {sha})"


def _demo(
    out: Path, train_new_encoder, train_clean, epochs, limit_train, limit_test, seed, progress
) -> dict:
    timings: dict[str, float] = {}
    started = time.time()
    encoder: str | Path | None = None  # the recipe's
    if train_new_encoder:
        from activedaemon.tokens.train import EncoderTrainConfig, train_encoder

        train_encoder(EncoderTrainConfig(seed=seed), out / "encoder", progress=progress)
        encoder = out / "encoder"
        timings["encoder_seconds"] = round(time.time() - started, 1)

    configs = {
        "clean": demo_config(False, None, epochs, limit_train, limit_test, seed),
        "protected": demo_config(
            True, encoder, epochs, limit_train, limit_test, seed, clean_run=out / "clean"
        ),
    }
    clean_source = None if train_clean else shipped_clean_baseline(out / "clean", configs["clean"])
    for name, cfg in configs.items():
        t = time.time()
        if not finished_run(out / name, cfg):  # a rerun keeps what already finished
            train_classifier(cfg, out / name, progress=progress)
            release_freed_memory()  # what training freed, before the next stage
        timings[f"{name}_seconds"] = round(time.time() - t, 1)

    t = time.time()
    results = evaluate_protection(
        out / "protected",
        clean_run=out / "clean",
        limit_test=limit_test,
        per_user_images=min(1000, limit_test or 1000),
        seed=seed,
    )
    timings["evaluate_seconds"] = round(time.time() - t, 1)
    release_freed_memory()  # the evaluation's token sets, before the audit loads its own
    t = time.time()
    ctx = load_context(out / "protected", limit_test=limit_test or 2000, seed=seed)
    thieves = thief_audit(ctx)
    write_json(out / "thieves.json", thieves)
    timings["audit_seconds"] = round(time.time() - t, 1)
    results["recipe"] = RECIPE
    results["clean_baseline"] = clean_source or "trained in this run"
    results["thieves"] = {
        "largest": thieves["largest"],
        "verdict": thieves["verdict"],
        "holds": thieves["holds"],
    }
    timings["total_seconds"] = round(time.time() - started, 1)
    results["timings"] = timings
    write_json(out / "protected" / "results.json", results)
    write_json(out / "results.json", results)

    encoder = cfg.encoder
    gen = TokenGenerator.load(encoder)
    test = cfg.load_data(train=False, limit_test=6).test.images
    grid = save_sample_grid(gen, test, out / "samples.png", seed=seed)
    notes = [
        f"Clean baseline: {results['clean_baseline']}.",
        "Wall time on this machine: " + ", ".join(f"{k} {v}" for k, v in timings.items()),
    ]
    section = thieves_section(thieves, shipped_encoder=is_shipped_encoder(encoder))
    write_report(results, out / "report.html", figures=[grid], notes=notes, thieves=section)
    return results
