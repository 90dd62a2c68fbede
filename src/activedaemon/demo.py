"""The demo: encoder (shipped or trained), clean baseline, protected model, evaluation, report."""

from __future__ import annotations

import time
from pathlib import Path

from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.evaluate.report import write_report
from activedaemon.protect import train_classifier
from activedaemon.protect.config import ProtectConfig, resolve_config
from activedaemon.runs import release_freed_memory, run_record, write_json
from activedaemon.tokens import TokenGenerator
from activedaemon.tokens.figures import save_sample_grid

SHIPPED_ENCODER = "fashion-mnist-32"
PRESET = "cpu-small"


def demo_config(
    protected: bool,
    encoder: str | Path = SHIPPED_ENCODER,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
) -> ProtectConfig:
    """The demo's clean or protected config: the cpu-small preset with the demo's flags (the
    merge every command uses, protect.config)."""
    flags = {"seed": seed, "encoder": str(encoder), "epochs": epochs}
    flags.update(limit_train=limit_train, limit_test=limit_test)
    return resolve_config(PRESET, flags=flags, fixed={"protected": protected})


def run_demo(
    out: str | Path = "demo",
    train_new_encoder: bool = False,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fashion-MNIST, CPU preset: writes OUT/ encoder/ (if trained), clean/, protected/,
    results.json, report.html, samples.png, under a run record. Returns the results."""
    config = {
        "train_new_encoder": train_new_encoder,
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
    }
    with run_record(out, "demo", config, seed) as rec:
        results = _demo(rec.out, train_new_encoder, epochs, limit_train, limit_test, seed, progress)
        rec.metrics = {k: v for k, v in results.items() if k != "per_user"}
    return results


def _demo(out: Path, train_new_encoder, epochs, limit_train, limit_test, seed, progress) -> dict:
    timings: dict[str, float] = {}
    started = time.time()
    encoder: str | Path = SHIPPED_ENCODER
    if train_new_encoder:
        from activedaemon.tokens.train import EncoderTrainConfig, train_encoder

        train_encoder(EncoderTrainConfig(seed=seed), out / "encoder", progress=progress)
        encoder = out / "encoder"
        timings["encoder_seconds"] = round(time.time() - started, 1)

    for name, protected in (("clean", False), ("protected", True)):
        t = time.time()
        cfg = demo_config(protected, encoder, epochs, limit_train, limit_test, seed)
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
    timings["total_seconds"] = round(time.time() - started, 1)
    results["timings"] = timings
    write_json(out / "protected" / "results.json", results)
    write_json(out / "results.json", results)

    gen = TokenGenerator.load(encoder)
    test = cfg.load_data(train=False, limit_test=6).test.images
    grid = save_sample_grid(gen, test, out / "samples.png", seed=seed)
    notes = ["Wall time on this machine: " + ", ".join(f"{k} {v}" for k, v in timings.items())]
    write_report(results, out / "report.html", figures=[grid], notes=notes)
    return results
