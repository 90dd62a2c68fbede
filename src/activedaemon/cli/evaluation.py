"""Measuring protected models: `evaluate`, `attack` and `compare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from activedaemon.cli.common import (
    add_attack_param,
    add_command,
    add_data_flags,
    add_json,
    add_model_encoder,
    add_out,
    add_preset,
    add_quiet,
    add_seed,
    add_set,
    check_dataset,
    emit_json,
    given_flags,
    json_only,
    parse_attack_params,
    parse_overrides,
    positive_int,
    split_names,
)


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "evaluate",
        help="measure A_or, A_ad, A_ud, A_od, A_pd, A_dec, stealth, fake and moved tokens",
        description="Evaluate a protected run on its data set's test split and write "
        "results.json (into the model's run folder unless --out is given).",
    )
    p.add_argument("--model", required=True, help="protected run folder")
    add_model_encoder(p)
    p.add_argument("--clean", help="clean baseline run folder (for A_or, A_od)")
    add_data_flags(p, dataset=None, limit_test=True, limit_test_aliases=("--limit",))
    add_seed(p)
    add_out(p, "results file (default MODEL/results.json)")
    p.set_defaults(func=cmd_evaluate)

    p = add_command(
        sub,
        "attack",
        help="run attacks on a protected model (see `activedaemon attack list`)",
        description="Run one or more attacks (or 'all') against a protected run and print each "
        "one's verdict against its target; 'activedaemon attack list' shows every attack with "
        "its threat model. With --out, writes OUT/attacks.json, one figure per attack and "
        "OUT/report.html. 'all' takes about 30 minutes on 2 CPU cores at the defaults (the "
        "dormancy audit about 11); --fast shrinks every attack (seconds).",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="attack names, 'all' or 'list'")
    p.add_argument("--model", help="protected run folder")
    add_model_encoder(p)
    add_data_flags(
        p,
        dataset="data set (default: the model's own)",
        limit_test=True,
        limit_test_default=2000,
    )
    add_seed(p)
    p.add_argument("--fast", action="store_true", help="small settings (seconds per attack)")
    add_out(p, "folder for attacks.json, figures and report.html")
    add_json(p)
    add_attack_param(p, "an attack's parameter: reverse.steps=1000, dormancy.percents=[1,10]")
    add_quiet(p)
    p.set_defaults(func=cmd_attack)

    p = add_command(
        sub,
        "compare",
        help="ActiveDaemon beside M-LOCK, ADIP, DeepIPR passports and ChaoW (Tables I, III, X)",
        description="Train one clean baseline and every scheme on the same data and model, "
        "measure A_or, A_ad, A_ud, A_od, A_pd, A_fk, PSNR/SSIM/ERGAS, params and FLOPs, run the "
        "attacks that apply, and write OUT/compare.json, compare.csv, report.html, samples.png "
        "and pruning.png. --fast: tiny subsets, 1 epoch (seconds).",
    )
    p.add_argument(
        "--schemes",
        help="comma-separated schemes (default: every compared scheme; an unknown name lists them)",
    )
    add_data_flags(
        p,
        dataset="data set name or imagefolder:PATH (default fashion-mnist)",
        dataset_default="fashion-mnist",
        data_root=False,
        limit_train=True,
        limit_test=True,
        limit_test_default=2000,
    )
    add_out(p, "folder for compare.json, compare.csv, report.html and the figures", required=True)
    add_preset(p)
    p.add_argument(
        "--attacks",
        help="comma-separated attacks to run on every scheme (default: compare's standard "
        "set; see `activedaemon attack list`)",
    )
    add_attack_param(p, "cap an attack: extraction.queries=1000, finetune.percents=[1,5]")
    p.add_argument("--epochs", type=positive_int)
    add_seed(p)
    p.add_argument("--fast", action="store_true", help="tiny subsets, 1 epoch, small attacks")
    add_set(p, "any ProtectConfig option, e.g. --set width=32")
    add_quiet(p)
    p.set_defaults(func=cmd_compare)


def print_results(results: dict) -> None:
    from activedaemon.evaluate.protection import RESULT_KEYS

    for key in RESULT_KEYS:
        value = results.get(key)
        print(f"{key:<16} {'null' if value is None else f'{value:.4f}'}")
    for row in results.get("per_user", []):
        print(f"  user {row['user_id']!s:<10} A_ad {row['A_ad']:6.2f}  A_dec {row['A_dec']:6.2f}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from activedaemon.evaluate.protection import evaluate_protection
    from activedaemon.runs import run_record, write_json

    path = Path(args.out) if args.out else Path(args.model) / "results.json"
    config = {k: getattr(args, k) for k in ("model", "encoder", "clean", "limit_test", "seed")}
    # The record sits beside the results: results.run.json, results.config.yaml.
    with run_record(path.parent, "evaluate", config, args.seed, prefix=path.stem + ".") as rec:
        results = evaluate_protection(
            args.model,
            args.encoder,
            args.clean,
            data_root=args.data_root,
            limit_test=args.limit_test,
            seed=args.seed,
            force_encoder=args.force_encoder,
        )
        write_json(path, results)
        rec.metrics = {k: v for k, v in results.items() if k != "per_user"}
    print_results(results)
    print(f"written to {path}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from activedaemon.attacks import ATTACKS, list_attacks, threat_model

    if args.names == ["list"]:
        for name in list_attacks():
            print(f"{name:<13} {threat_model(name)}")
        return 0
    names = None if args.names == ["all"] else args.names  # all: every one that applies
    if names is not None:
        ATTACKS.check(names)  # 'all' and 'list' go alone
    params = parse_attack_params(args.attack_param)
    check_dataset(args.dataset)
    if not args.model:
        raise ValueError("--model is required (a protected run folder)")
    import logging

    from activedaemon.attacks.suite import load_context, run_suite

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = load_context(
        args.model,
        args.encoder,
        dataset=args.dataset,
        data_root=args.data_root,
        limit_test=args.limit_test,
        seed=args.seed,
        fast=args.fast,
        out=args.out,
        progress=not args.quiet,
        force_encoder=args.force_encoder,
    )
    config = {"model": str(args.model), "encoder": args.encoder or ctx.model.card["encoder"]}
    results = run_suite(ctx, names, params, config=config)
    if json_only(args):
        emit_json("-", results)
        return 0
    print(f"without attack: A_ad {ctx.baseline['A_ad']:.2f}  A_ud {ctx.baseline['A_ud']:.2f}")
    for name, r in results["attacks"].items():
        figures = {k: v for k, v in r["metrics"].items() if k not in ("A_ad", "A_ud")}
        shown = "  ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
        )
        print(f"{name:<13} {r['verdict']:<7} {r['target']}\n{'':<13} {shown}")
        for note in r["notes"]:
            print(f"{'':<13} {note}")
    emit_json(args.json, results)
    if args.out:
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from activedaemon.attacks import ATTACKS
    from activedaemon.protect.config import load_preset
    from activedaemon.schemes import SCHEMES

    schemes = split_names(args.schemes) if args.schemes is not None else None
    attacks = split_names(args.attacks) if args.attacks is not None else None
    if schemes is not None:
        SCHEMES.check(schemes)
    if attacks is not None:
        ATTACKS.check(attacks)
    attack_params = parse_attack_params(args.attack_param)
    check_dataset(args.dataset)
    load_preset(args.preset)  # an unknown preset fails here, before the slower imports
    flags = given_flags(args, ("epochs", "limit_train"))
    overrides = parse_overrides(args.set)
    import logging

    from activedaemon.schemes.compare import (
        COLUMNS,
        DEFAULT_ATTACKS,
        compare_config,
        run_compare,
    )

    try:
        compare_config(  # builds and checks the config before anything trains
            args.dataset, args.preset, args.fast, args.seed, overrides, flags
        )
    except TypeError as e:  # an unknown key of a nested option (poison, adversarial, ...)
        raise ValueError(f"bad option: {e}") from None
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run_compare(
        args.out,
        schemes,
        dataset=args.dataset,
        preset=args.preset,
        fast=args.fast,
        seed=args.seed,
        overrides=overrides,
        flags=flags,
        limit_test=args.limit_test,
        attacks=tuple(attacks if attacks is not None else DEFAULT_ATTACKS),
        attack_params=attack_params,
        progress=not args.quiet,
    )
    print("  ".join(f"{c:>10}" for c in COLUMNS[:12]))
    for entry in results["schemes"].values():
        cells = [entry["row"].get(c) for c in COLUMNS[:12]]
        print("  ".join(f"{v:>10.2f}" if isinstance(v, float) else f"{v!s:>10}" for v in cells))
    for name, entry in results["schemes"].items():
        for attack, why in entry["skipped"].items():
            print(f"{name}: skipped {attack}: {why}")
    print(
        f"written to {args.out}: compare.json, compare.csv, report.html, samples.png, pruning.png"
    )
    return 0
