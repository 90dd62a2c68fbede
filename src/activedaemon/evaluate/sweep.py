"""Sweeps: label strategies (Table II) and gamma (Fig. 2), each point a protect + evaluate run."""

from __future__ import annotations

import csv
from pathlib import Path

from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.protect.poison import STRATEGIES
from activedaemon.protect.train import ProtectConfig, load_preset, train_classifier
from activedaemon.runs import finished_run, run_record, write_json

SWEEP_COLUMNS = ["A_ad", "A_ud", "A_or", "A_od", "A_pd", "A_td_gaussian", "A_td_mismatched"]
GAMMA_VALUES = [0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.99]


def run_sweep(
    kind: str,
    out: str | Path,
    values: list | None = None,
    preset: str = "cpu-small",
    overrides: dict | None = None,
    progress: bool = True,
) -> Path:
    """Train a clean baseline once, then one protected model per value (every registered label
    strategy, or gamma values); write sweep.csv + .png. Finished runs of an earlier sweep with
    the same config are reused."""
    if kind not in ("strategy", "gamma"):
        raise ValueError("kind must be 'strategy' or 'gamma'")
    values = values or (STRATEGIES.names() if kind == "strategy" else GAMMA_VALUES)
    base = {**load_preset(preset), **(overrides or {})}
    # Every point's config is built (and so validated) before anything trains.
    configs = {
        value: ProtectConfig.from_dict({**base, "poison": {**base.get("poison", {}), kind: value}})
        for value in values
    }
    clean_cfg = ProtectConfig.from_dict({**base, "protected": False})
    config = {"kind": kind, "values": values, "preset": preset, "overrides": overrides or {}}
    with run_record(out, "sweep", config, clean_cfg.seed) as rec:
        out = rec.out
        clean = out / "clean"
        if not finished_run(clean, clean_cfg):
            train_classifier(clean_cfg, clean, progress)
        rows = []
        for value, cfg in configs.items():
            run = out / f"{kind}-{value}"
            if not finished_run(run, cfg):
                train_classifier(cfg, run, progress)
            results = evaluate_protection(
                run, cfg.encoder, clean, limit_test=cfg.limit_test, per_user_images=0
            )
            write_json(run / "results.json", results)
            rows.append({kind: value, **{k: _round(results[k]) for k in SWEEP_COLUMNS}})
        with open(out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[kind, *SWEEP_COLUMNS])
            writer.writeheader()
            writer.writerows(rows)
        _plot(kind, rows, out / "sweep.png")
        rec.metrics = {"rows": rows}
    return out / "sweep.csv"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _plot(kind: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [str(r[kind]) for r in rows]
    for key, style in (("A_ad", "o-"), ("A_ud", "s-"), ("A_td_mismatched", "^--")):
        xs = [r[kind] for r in rows] if kind == "gamma" else range(len(rows))
        ax.plot(xs, [r[key] for r in rows], style, label=key)
    if kind == "gamma":
        ax.set_xscale("log")
        ax.set_xlabel("gamma (fraction of authorized training samples)")
    else:
        ax.set_xticks(range(len(rows)), labels)
        ax.set_xlabel("label strategy for unauthorized samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
