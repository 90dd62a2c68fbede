"""Rerun the CPU result set end to end and rewrite the results pages from its artefacts.

    python benchmarks/reproduce.py --out runs/reproduce            # the recipes' scale
    python benchmarks/reproduce.py --out runs/reproduce --fast     # smoke scale: minutes
    python benchmarks/reproduce.py --out runs/reproduce --collect-only   # copy and write only

Steps (each a command of its own, so any one can be rerun by hand):
1. ``activedaemon demo`` (``--fast``: 1 epoch on 2,000 training and 500 test images);
2. ``activedaemon attack all`` on the demo's protected model (``--fast``: the tests' settings);
3. ``benchmarks/dormancy_frontier.py`` with the paper's recipe, the warm start without and with
   the per-query negatives (the recommended recipe), thieves at the quick audit's settings
   (skipped with ``--fast`` unless ``--frontier``: it trains one model per setting);
4. copies the small artefacts (results.json, attacks.json, frontier.json and their run.json)
   into docs/results/data/, then runs ``benchmarks/write_docs.py``.

Run with ``OMP_NUM_THREADS`` set to the cores you can spare; every run records its seed, commit
and machine in its run.json, and the pages state them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "results" / "data"
FAST_DEMO = ["--epochs", "1", "--limit-train", "2000", "--limit-test", "500"]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        print(f"copied {src} -> {dst.relative_to(ROOT)}")


def collect(out: Path) -> None:
    """Copy the small artefacts of a reproduce folder into docs/results/data/."""
    demo = out / "demo"
    for name in ("results.json", "run.json", "config.yaml", "thieves.json"):
        copy(demo / name, DATA / "demo" / name)
    attacks = out / "attacks"
    report = attacks / "attacks.json"
    if report.is_file():
        copy(report, DATA / "attacks" / "attacks.json")
        copy(attacks / "run.json", DATA / "attacks" / "run.json")
    frontier = out / "frontier"
    copy(frontier / "frontier.json", DATA / "frontier" / "frontier.json")
    copy(frontier / "run.json", DATA / "frontier" / "run.json")
    copy(frontier / "frontier.png", DATA / "frontier" / "frontier.png")
    for path in DATA.rglob("*.json"):  # keep the committed artefacts small
        if path.stat().st_size > 200_000:
            print(f"warning: {path} is {path.stat().st_size} bytes", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--fast", action="store_true", help="smoke scale (minutes on 2 cores)")
    parser.add_argument("--frontier", action="store_true", help="run the frontier with --fast too")
    parser.add_argument("--collect-only", action="store_true", help="copy artefacts and write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out.resolve()
    ad = [sys.executable, "-m", "activedaemon.cli"]
    if not args.collect_only:
        demo = [*ad, "demo", "--out", str(out / "demo"), "--seed", str(args.seed), "-q"]
        run(demo + (FAST_DEMO if args.fast else []))
        attack = [*ad, "attack", "all", "--model", str(out / "demo" / "protected")]
        attack += ["--out", str(out / "attacks"), "--seed", str(args.seed), "-q"]
        run(attack + (["--fast"] if args.fast else []))
        if not args.fast or args.frontier:
            frontier = [sys.executable, "benchmarks/dormancy_frontier.py"]
            frontier += ["--out", str(out / "frontier"), "--seed", str(args.seed), "-q"]
            frontier += ["--settings", "paper,warm,warm+wakeup1", "--audit", "quick"]
            frontier += ["--reverse-steps", "0"]
            run(
                frontier
                + (["--fast", "--limit-train", "2000", "--epochs", "1"] if args.fast else [])
            )
    collect(out)
    run([sys.executable, "benchmarks/write_docs.py"])
    summary = {p.name: p.stat().st_size for p in DATA.rglob("*") if p.is_file()}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
