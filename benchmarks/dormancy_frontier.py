"""The dormancy frontier: authorized accuracy (A_od) against what a thief without a token gains,
for each protection lever alone and combined, all measured in one run.

    python benchmarks/dormancy_frontier.py --out runs/frontier [--settings paper,warm,...]
        [--audit full|quick] [--epochs 5] [--limit-train N] [--limit-test 2000] [--seed 0]
    bash benchmarks/frontier_parallel.sh runs/frontier paper,warm,warm+wakeup1 --audit quick

Trains a clean baseline (A_or) and one protected model per setting on the CPU preset (a run folder
that already holds weights is reused), then per model: evaluate (A_ad, A_ud, A_od, Gaussian and
moved tokens), the `transit` attack (A_ad after JPEG and noise), the `dormancy` audit (passive
thieves) and the `wake` audit (per-query wake-up, universal keys, source-free adaptation), each
thief beside its honest alternative (--audit quick: the demo report's settings), and the
`reverse` attack with --reverse-steps (1,000; 0 skips it) at 1x the token's budget. Settings that
start from the owner's clean model (`from-clean...`, `warm...`) use this run's clean baseline.
Writes OUT/frontier.json (after every setting), frontier.csv and frontier.png (A_od against the
largest gain of a thief without a token). `frontier_parallel.sh` runs the settings as parallel
processes (one GPU shared, or many cores) and merges their tables (--merge).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from activedaemon.attacks import run_attack
from activedaemon.attacks.audit import QUICK_DORMANCY, QUICK_WAKE
from activedaemon.attacks.suite import load_context
from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.protect.config import ProtectConfig, resolve_config
from activedaemon.protect.train import train_classifier
from activedaemon.runs import finished_run, git_commit, run_record, write_json

TRANSIT_ENCODER = "fashion-mnist-32-transit"
TRANSIT_KEYS = [
    f"{what} {t}"
    for t in ("jpeg q90", "jpeg q75", "noise sigma 0.01")
    for what in ("A_ad", "decoded")
]
UNIFORM = {"objective": "uniform"}
CLEAN = "<this run's clean baseline>"
# An encoder whose tokens are bound to their image (trained with w_mismatch: the decoder reads
# nothing from a token moved to another image); a path given by --bound-encoder.
BOUND_ENCODER = "<--bound-encoder>"
# A warm start: the owner's clean model, the JPEG-trained encoder and transit-robust tokens,
# gamma 0.5, two epochs at lr 0.02; WARM adds uniform targets and the feature term; WARM with
# clean_bn (the warm+clean-bn setting) is cpu-recommended.
TRANSIT_WARM = {
    "encoder": TRANSIT_ENCODER,
    "init_from": CLEAN,
    "transit": {"fraction": 0.3},
    "poison": {"gamma": 0.5},
    "lr": 0.02,
    "epochs": 2,
}
WARM = {**UNIFORM, "dormancy": {"weight": 1.0}, **TRANSIT_WARM}
SETTINGS = {
    "paper": {},  # Algorithm 2 as the cpu-small preset has it: single hard target
    "uniform": UNIFORM,
    "dormancy": {"dormancy": {"weight": 1.0}},
    "uniform+dormancy": {**UNIFORM, "dormancy": {"weight": 1.0}},
    "uniform+dormancy-2x2": {**UNIFORM, "dormancy": {"weight": 1.0, "pool": 2}},
    "uniform+dormancy-w0.3": {**UNIFORM, "dormancy": {"weight": 0.3}},
    "uniform+dormancy-w3": {**UNIFORM, "dormancy": {"weight": 3.0}},
    "uniform+probe-term": {**UNIFORM, "dormancy": {"weight": 1.0, "measure": "probe"}},
    "uniform+adversarial": {**UNIFORM, "adversarial": {"fraction": 0.5}},
    # Issue 13: authorized users and honest transport.
    "paper+transit": {"transit": {"fraction": 0.3}},
    "from-clean": {"init_from": CLEAN},
    "from-clean+transit": {"init_from": CLEAN, "transit": {"fraction": 0.3}},
    "from-clean+transit-2ep": {"init_from": CLEAN, "transit": {"fraction": 0.3}, "epochs": 2},
    "from-clean+transit-2ep+pbn": {
        "init_from": CLEAN,
        "transit": {"fraction": 0.3},
        "epochs": 2,
        "precise_bn_images": 5000,
    },
    "paper+transit+pbn": {"transit": {"fraction": 0.3}, "precise_bn_images": 5000},
    # The JPEG-trained encoder (fashion-mnist-32-transit) with the transit piece.
    "transit-encoder": {"encoder": TRANSIT_ENCODER, "transit": {"fraction": 0.3}},
    "transit-encoder+gamma0.5": {
        "encoder": TRANSIT_ENCODER,
        "transit": {"fraction": 0.3},
        "poison": {"gamma": 0.5},
    },
    "from-clean+transit-encoder+gamma0.5-lr0.02-2ep": TRANSIT_WARM,
    "from-clean+uniform+dormancy+transit-encoder+gamma0.5-lr0.02-2ep": WARM,
    "warm": WARM,
    # Levers against the active thieves (per-query wake-up, universal keys): the worst
    # neighbour of unauthorized samples in the loop, noise on the unauthorized path.
    "warm+wakeup0.5": {**WARM, "wakeup": {"fraction": 0.5, "budget_scale": 0.5}},
    "warm+wakeup1": {**WARM, "wakeup": {"fraction": 0.5, "budget_scale": 1.0}},
    "warm+wakeup2": {**WARM, "wakeup": {"fraction": 0.5, "budget_scale": 2.0}},
    "warm+smoothing": {**WARM, "smoothing": {"fraction": 0.3, "sigma": 0.1}},
    "warm+wakeup1+smoothing+adversarial": {
        **WARM,
        "wakeup": {"fraction": 0.5, "budget_scale": 1.0},
        "smoothing": {"fraction": 0.3, "sigma": 0.1},
        "adversarial": {"fraction": 0.25},
    },
    "warm+wakeup1-4ep": {**WARM, "wakeup": {"fraction": 0.5, "budget_scale": 1.0}, "epochs": 4},
    "warm-plain+wakeup1": {
        **{k: v for k, v in WARM.items() if k not in ("encoder", "transit")},
        "wakeup": {"fraction": 0.5, "budget_scale": 1.0},
    },
    # Universal adversarial training against the label-free universal key: the pool's attacker
    # is the thief's own (information maximisation, no labels), inside 1 x a token's size.
    "warm+key-im": {
        **WARM,
        "adversarial": {"fraction": 0.5, "objective": "im", "budget_scale": 1.0},
    },
    "warm+key-im-fast": {  # the pool follows the model: 2 members, big steps
        **WARM,
        "adversarial": {
            "fraction": 0.5,
            "objective": "im",
            "budget_scale": 1.0,
            "pool": 2,
            "step": 0.2,
        },
    },
    "warm+key-refresh": {  # and a key searched from scratch (40 steps) joins every 25 batches
        **WARM,
        "adversarial": {
            "fraction": 0.5,
            "objective": "im",
            "budget_scale": 1.0,
            "pool": 4,
            "refresh_every": 25,
            "refresh_steps": 40,
        },
    },
    # BatchNorm trained under the clean rows' statistics: re-estimating them on clean images (a
    # thief's free first step) finds what the model was trained with.
    "warm+clean-bn": {**WARM, "clean_bn": {"enabled": True}},
    # the shipped recipe plus Gaussian noise on unauthorized rows (the randomized-smoothing step
    # of Authority Backdoor): dormancy trained over a cloud around each clean image, not a point
    "warm+clean-bn+smoothing": {
        **WARM,
        "clean_bn": {"enabled": True},
        "smoothing": {"fraction": 0.5, "sigma": 0.05},
    },
    # The encoder-side lever against keys and moved tokens: tokens bound to their image (no
    # transit: neither encoder is trained for JPEG), beside the same recipe with the plain encoder.
    "plain+clean-bn": {
        **{k: v for k, v in WARM.items() if k not in ("encoder", "transit")},
        "clean_bn": {"enabled": True},
    },
    "bound+clean-bn": {
        **{k: v for k, v in WARM.items() if k not in ("encoder", "transit")},
        "clean_bn": {"enabled": True},
        "encoder": BOUND_ENCODER,
    },
    "warm-plain+key-im": {
        **{k: v for k, v in WARM.items() if k not in ("encoder", "transit")},
        "adversarial": {"fraction": 0.5, "objective": "im", "budget_scale": 1.0},
    },
    "uniform+dormancy+wakeup1": {
        **UNIFORM,
        "dormancy": {"weight": 1.0},
        "wakeup": {"fraction": 0.5, "budget_scale": 1.0},
    },
}


def setting_config(
    overrides: dict, args: argparse.Namespace, protected: bool = True, preset: str = "cpu-small"
) -> ProtectConfig:
    """A setting's config: the CPU preset, then the benchmark's flags, then the setting's own
    options (the one deep merge of protect.config: ``poison: {gamma: 0.5}`` keeps the preset's
    other poison options)."""
    flags = {"seed": args.seed, "epochs": args.epochs, "limit_train": args.limit_train}
    fixed = {"protected": protected}
    if protected:  # the poisoned set's cache (a clean run has none)
        fixed["cache_dir"] = str(args.out / "cache")
    if "epochs" in overrides:
        overrides = {"min_steps": 0, **overrides}  # an explicit epoch count is exact
    if overrides.get("init_from") == CLEAN:
        overrides = {**overrides, "init_from": str(args.out / "clean")}
    if overrides.get("encoder") == BOUND_ENCODER:
        if args.bound_encoder is None:
            raise SystemExit("this setting needs --bound-encoder PATH (a train-encoder run)")
        overrides = {**overrides, "encoder": str(args.bound_encoder)}
    return resolve_config(preset, flags=flags, overrides=overrides, fixed=fixed)


def train(name: str, overrides: dict, args: argparse.Namespace, protected: bool = True) -> Path:
    out = args.out / name
    cfg = setting_config(overrides, args, protected)
    if not finished_run(out, cfg):  # reuse: the same setting was trained to the end before
        train_classifier(cfg, out, progress=not args.quiet)
    return out


def measure(name: str, run: Path, clean: Path, args: argparse.Namespace) -> dict:
    common = {"limit_test": args.limit_test, "seed": args.seed}
    ev = evaluate_protection(run, None, clean, per_user_images=100, **common)  # the card's encoder
    ctx = load_context(run, None, fast=args.fast, out=args.out / name / "attacks", **common)
    if torch.cuda.is_available():  # the thieves' searches and fine-tuning on the GPU
        ctx.model.to("cuda")
    transit = run_attack("transit", ctx).metrics
    quick = args.audit == "quick"
    audit = run_attack("dormancy", ctx, **(QUICK_DORMANCY if quick else {}))
    active = run_attack("wake", ctx, **(QUICK_WAKE if quick else {}))
    steps = 30 if args.fast else args.reverse_steps
    reverse = run_attack("reverse", ctx, steps=steps, budget_scales=(1.0,)) if steps else None
    trained = json.loads((run / "run.json").read_text())
    gains = {
        k.removeprefix("gain_"): v
        for result in (audit, active)
        for k, v in result.metrics.items()
        if k.startswith("gain_")
    }
    worst = max(gains, key=gains.get)
    return {
        "setting": name,
        "overrides": SETTINGS.get(name, {}),
        **{k: ev[k] for k in ("A_or", "A_ad", "A_ud", "A_od", "A_td_gaussian", "A_td_mismatched")},
        "runner_up": audit.metrics["runner_up"],
        "runner_up_top3": audit.metrics["runner_up_top3"],
        "max_probe_gain": max(v for k, v in gains.items() if k.startswith("probe")),
        "max_finetune_gain": max(v for k, v in gains.items() if k.startswith("finetune")),
        "bn_output": _bn_output({"audit": audit.to_dict()}),
        "audit_settings": args.audit,
        "max_gain": gains[worst],
        "max_gain_thief": worst,
        **{k: transit[k] for k in TRANSIT_KEYS},
        "encoder": ctx.model.card["encoder"],
        "universal_x1": reverse.metrics["universal_x1"] if reverse else None,
        "neural_cleanse": reverse.metrics["neural_cleanse"] if reverse else None,
        **{k: v for k, v in active.metrics.items() if not k.startswith(("gain_", "A_", "max"))},
        "max_wake_gain": active.metrics["max_gain"],
        "epoch_seconds": trained["metrics"]["epoch_seconds"],
        "audit": audit.to_dict(),
        "wake": active.to_dict(),
    }


def save_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["max_gain"], r["A_od"])
        ax.annotate(r["setting"], (r["max_gain"], r["A_od"]), fontsize=7)
    ax.axvline(3, color="grey", ls=":", lw=1, label="target: gain <= 3")
    ax.axhline(-3, color="grey", ls="--", lw=1, label="target: A_od >= -3")
    ax.set_xlabel("largest gain of a thief without a token over its alternative (points)")
    ax.set_ylabel("A_od = A_ad - A_or (points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default="paper,uniform,uniform+dormancy")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--limit-train", type=int)
    parser.add_argument("--limit-test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="attacks in fast mode (smoke test)")
    parser.add_argument(
        "--audit",
        choices=["full", "quick"],
        default="full",
        help="the thieves' settings: each attack's defaults, or the demo report's quick audit "
        "(1 %% labels, budgets 0.5x and 1x, 500 queries, no SHOT)",
    )
    parser.add_argument("--reverse-steps", type=int, default=1000, help="0 skips `reverse`")
    parser.add_argument(
        "--bound-encoder",
        type=Path,
        help="the encoder of the bound+ settings: a train-encoder run with w_mismatch > 0",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument(
        "--clean-only", action="store_true", help="train the clean baseline and stop"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="merge the frontier.json of these run folders into OUT (settings run in parallel)",
    )
    args = parser.parse_args()
    if args.clean_only:
        train("clean", {}, args, protected=False)
        return
    if args.merge:
        with run_record(
            args.out, "benchmark-dormancy-frontier-merge", vars(args), args.seed
        ) as rec:
            rows = [r for f in args.merge for r in merged_rows(f)]
            rec.metrics = {"rows": write_tables(rows, args)}
        return
    names = [s for s in args.settings.split(",") if s]
    unknown = set(names) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; settings: {', '.join(SETTINGS)}")
    with run_record(args.out, "benchmark-dormancy-frontier", vars(args), args.seed) as rec:
        rec.metrics = {"rows": run(names, args)}


def run(names: list[str], args: argparse.Namespace) -> list[dict]:
    clean = train("clean", {}, args, protected=False)
    saved = args.out / "frontier.json"
    done = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    rows = [r for r in done if r["setting"] not in names]
    for name in names:
        rows.append(measure(name, train(name, SETTINGS[name], args), clean, args))
        write_json(saved, {"commit": git_commit(), "seed": args.seed, "rows": rows})
        r = rows[-1]
        shown = {k: r[k] for k in ("A_od", "A_ud", "max_gain", "runner_up", "universal_x1")}
        shown.update({k: r[k] for k in TRANSIT_KEYS if k.startswith("A_ad")})
        print(name, r["max_gain_thief"], json.dumps(shown), flush=True)
    return write_tables(rows, args)


def _bn_output(row: dict) -> float | None:
    """The BatchNorm thief of a saved row's audit (None: measured before that thief existed)."""
    metrics = (row.get("audit") or {}).get("metrics") or {}
    return max((v for k, v in metrics.items() if k.startswith("bn_output")), default=None)


def merged_rows(folder: Path) -> list[dict]:
    """The rows of a frontier folder, or of a demo folder (its protected model as one row, with
    the quick audit: the frontier's warm+wakeup1 training when the demo starts from this run's
    clean baseline)."""
    # The code that measured a row: the commit its run started from (run.json).
    started = json.loads((folder / "run.json").read_text())["commit"]
    if (folder / "frontier.json").is_file():
        saved = json.loads((folder / "frontier.json").read_text())
        return [{"commit": started, "bn_output": _bn_output(r), **r} for r in saved["rows"]]
    results = json.loads((folder / "results.json").read_text())
    thieves = json.loads((folder / "thieves.json").read_text())
    # The folder's name is the setting's (the demo of another recipe is named by its folder).
    tested = f"{results['test_images']:,} test images"
    row = {"setting": f"{folder.name} (demo run, {tested})", "audit_settings": "quick"}
    row["commit"] = started
    row["overrides"] = SETTINGS.get(folder.name, {})
    keys = ("A_or", "A_ad", "A_ud", "A_od", "A_td_gaussian", "A_td_mismatched", "encoder")
    row.update({k: results[k] for k in keys})
    by_thief = {}
    for r in thieves["rows"]:
        budget = r.get("budget (x token)")
        by_thief[r["thief"] if budget is None else f"{r['thief']} x{budget:g}"] = r
    row["runner_up"] = by_thief["runner-up label"]["thief (%)"]
    row["runner_up_top3"] = by_thief["true label in runner-up top 3"]["thief (%)"]
    for name, key in (
        ("per-query wake-up", "per_query"),
        ("label-free universal key", "label_free_key"),
    ):
        for b in (0.5, 1.0):
            row[f"{key}_x{b:g}"] = by_thief[f"{name} x{b:g}"]["thief (%)"]
    probes = [r["gain"] for t, r in by_thief.items() if t.startswith("best linear probe")]
    row["max_probe_gain"] = max(probes) if probes else None
    row["max_finetune_gain"] = by_thief["full fine-tuning"]["gain"]
    row["bn_output"] = (by_thief.get("BatchNorm re-estimated, output") or {}).get("thief (%)")
    row["max_gain"], row["max_gain_thief"] = thieves["largest"]["gain"], thieves["largest"]["thief"]
    return [row]


def write_tables(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    args.out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    rows = [{"commit": commit, **r} for r in rows]  # merged rows keep the commit that measured them
    write_json(args.out / "frontier.json", {"commit": commit, "seed": args.seed, "rows": rows})
    keys = [k for k in rows[0] if k not in ("audit", "wake", "overrides", "epoch_seconds")]
    with (args.out / "frontier.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    save_figure(rows, args.out / "frontier.png")
    return [{k: r.get(k) for k in keys} for r in rows]


if __name__ == "__main__":
    main()
