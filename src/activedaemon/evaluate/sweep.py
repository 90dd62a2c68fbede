"""Sweeps, each point a protect + evaluate run: label strategies (Table II), gamma (Fig. 2) and
encoders (Table IX: an encoder trained on one data set, used to protect a model on another)."""

from __future__ import annotations

import csv
from pathlib import Path

from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.protect import train_classifier
from activedaemon.protect.checkpoint import load_encoder
from activedaemon.protect.config import ProtectConfig, merge, resolve_values
from activedaemon.protect.poison import STRATEGIES
from activedaemon.runs import finished_run, run_record, write_json
from activedaemon.tokens.generator import shipped_encoders

SWEEP_KINDS = ("strategy", "gamma", "encoder")
SWEEP_COLUMNS = ["A_ad", "A_ud", "A_or", "A_od", "A_pd", "A_td_gaussian", "A_td_mismatched"]
# A_dec and the tokens' stealth on this data set: what an encoder from elsewhere gives up.
ENCODER_COLUMNS = [*SWEEP_COLUMNS, "A_dec", "exact_id_rate", "psnr", "ssim"]
GAMMA_VALUES = [0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.99]


def sweep_base(preset: str, overrides: dict | None = None, flags: dict | None = None) -> dict:
    """The options every point shares: the preset, then flags, then ``--set`` overrides (one deep
    merge, protect.config: an override changes only the keys it names)."""
    return resolve_values(preset, flags=flags, overrides=overrides)


def point_values(kind: str, base: dict, value) -> dict:
    """The protect options of one sweep point: ``base`` with the poison option ``kind`` (strategy,
    gamma) or the encoder set to ``value``."""
    if kind == "encoder":
        return merge(base, {"encoder": str(value)})
    return merge(base, {"poison": {kind: value}})


def default_values(kind: str) -> list:
    if kind == "strategy":
        return STRATEGIES.names()
    return GAMMA_VALUES if kind == "gamma" else shipped_encoders()


def run_sweep(
    kind: str,
    out: str | Path,
    values: list | None = None,
    preset: str = "cpu-small",
    overrides: dict | None = None,
    flags: dict | None = None,
    progress: bool = True,
) -> Path:
    """Train a clean baseline once, then one protected model per value (label strategies, gamma
    values, or encoders: run folders or shipped names, each protecting and evaluating its own
    model on the preset's data set); write sweep.csv + .png. Defaults: every registered
    strategy, GAMMA_VALUES, every shipped encoder. ``flags`` (epochs, limits) lie under the
    ``--set`` ``overrides``. Finished runs of an earlier sweep with the same config are reused."""
    if kind not in SWEEP_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SWEEP_KINDS)}")
    values = values or default_values(kind)
    base = sweep_base(preset, overrides, flags)
    # Every point's config is built (and so validated) before anything trains.
    configs = {value: ProtectConfig.from_dict(point_values(kind, base, value)) for value in values}
    # Each encoder exists and works at the data's size and channels; loaded once, used by its run.
    encoders = {v: load_encoder(cfg) for v, cfg in configs.items() if kind == "encoder"}
    columns = ENCODER_COLUMNS if kind == "encoder" else SWEEP_COLUMNS
    clean_cfg = ProtectConfig.from_dict(merge(base, {"protected": False}))
    config = {"kind": kind, "values": values, "preset": preset, "overrides": overrides or {}}
    if flags:
        config["flags"] = flags
    with run_record(out, "sweep", config, clean_cfg.seed) as rec:
        out = rec.out
        clean = out / "clean"
        if not finished_run(clean, clean_cfg):
            train_classifier(clean_cfg, clean, progress)
        rows = []
        for i, (value, cfg) in enumerate(configs.items()):
            # Encoders are paths: numbered, so that two folders of one name stay apart.
            name = f"{i + 1}-{Path(value).name}" if kind == "encoder" else value
            run = out / f"{kind}-{name}"
            if not finished_run(run, cfg):
                train_classifier(cfg, run, progress, encoder=encoders.get(value))
            results = evaluate_protection(
                run, cfg.encoder, clean, limit_test=cfg.limit_test, per_user_images=0
            )
            write_json(run / "results.json", results)
            rows.append({kind: value, **{k: _round(results[k]) for k in columns}})
        with open(out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[kind, *columns])
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
    labels = [Path(str(r[kind])).name for r in rows]
    for key, style in (("A_ad", "o-"), ("A_ud", "s-"), ("A_td_mismatched", "^--")):
        xs = [r[kind] for r in rows] if kind == "gamma" else range(len(rows))
        ax.plot(xs, [r[key] for r in rows], style, label=key)
    if kind == "gamma":
        ax.set_xscale("log")
        ax.set_xlabel("gamma (fraction of authorized training samples)")
    else:
        ax.set_xticks(range(len(rows)), labels)
        what = "encoder" if kind == "encoder" else "label strategy for unauthorized samples"
        ax.set_xlabel(what)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
