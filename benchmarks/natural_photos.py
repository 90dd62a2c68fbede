"""Natural photos with the defaults: does the pipeline tuned on Fashion-MNIST carry over?

    python benchmarks/natural_photos.py --out runs/photos [--size 32] [--seed 0]

Writes the photo-patch image folder (``activedaemon photos``: six scikit-image photos, one class
each, 9,000 training and 1,800 test patches), then runs what a new user would: ``train-encoder``
(preset cpu), ``train-clean`` and ``protect`` (preset cpu-small) and ``evaluate``, all with their
defaults on that folder. A stage whose run folder already ended ``done`` with the same config is
reused. Prints each figure against the issue-14 target and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from activedaemon.data.photos import build_photo_folder
from activedaemon.evaluate.protection import evaluate_protection
from activedaemon.protect.config import resolve_config
from activedaemon.protect.train import train_classifier
from activedaemon.runs import finished_run
from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder

# figure -> (target, test): the issue-14 targets for 32 px photos with the defaults.
TARGETS = {
    "exact_id_rate": (">= 99.5", lambda v, r: v >= 99.5),
    "psnr": (">= 33 dB", lambda v, r: v >= 33),
    "ssim": (">= 0.93", lambda v, r: v >= 0.93),
    "ergas": ("finite", lambda v, r: math.isfinite(v)),
    "A_od": (">= -3", lambda v, r: v >= -3),
    "A_td_mismatched": ("within 3 of A_ud", lambda v, r: abs(v - r["A_ud"]) <= 3),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    folder = out / f"photos{args.size}"
    if not folder.is_dir():
        build_photo_folder(folder, size=args.size, seed=args.seed)
    data = {"dataset": f"imagefolder:{folder}", "image_size": args.size, "seed": args.seed}
    seconds: dict[str, float] = {}

    def stage(name: str, cfg, run) -> None:
        if not finished_run(out / name, cfg):
            started = time.time()
            run(cfg, out / name)
            seconds[name] = round(time.time() - started, 1)

    stage("encoder", EncoderTrainConfig.from_dict({**PRESETS["cpu"], **data}), train_encoder)
    flags = {**data, "encoder": str(out / "encoder")}
    for name, protected in (("clean", False), ("protected", True)):
        cfg = resolve_config("cpu-small", flags=flags, fixed={"protected": protected})
        stage(name, cfg, train_classifier)

    tokens = json.loads((out / "encoder" / "metrics.json").read_text())
    results = evaluate_protection(out / "protected", clean_run=out / "clean", seed=args.seed)
    figures = {k: tokens[k] for k in ("exact_id_rate", "psnr", "ssim", "ergas")}
    figures.update({k: results[k] for k in ("A_or", "A_ad", "A_ud", "A_od", "A_td_mismatched")})
    protect_metrics = json.loads((out / "protected" / "run.json").read_text())["metrics"]
    length = {k: protect_metrics.get(k) for k in ("epochs_run", "optimizer_steps", "chosen_epoch")}
    report = {"size": args.size, "seed": args.seed, "figures": figures, "protect": length}
    report["targets_met"] = {k: bool(test(figures[k], figures)) for k, (_, test) in TARGETS.items()}
    report["seconds"] = seconds
    (out / "results.json").write_text(json.dumps(report, indent=2))

    print(f"natural photos {args.size} px, seed {args.seed}; protect: {length}")
    for key, value in figures.items():
        target, test = TARGETS.get(key, ("", None))
        verdict = "" if test is None else ("met" if test(value, figures) else "MISSED")
        print(f"  {key:<16} {value:9.3f}  {target:<18} {verdict}")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
