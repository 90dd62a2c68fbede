"""The single `activedaemon` entry point: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """\
ActiveDaemon: image classifiers that answer correctly only for queries carrying an invisible,
user-specific token (NDSS paper "ActiveDaemon: Unconscious DNN Dormancy and Waking Up via
User-specific Invisible Token").
"""


def _cmd_datasets(args: argparse.Namespace) -> int:
    from activedaemon.data import dataset_status

    rows = dataset_status(args.data_root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if row["found"]:
            print(
                f"{row['name']:<14} found    {row['path']}  ({row['bytes'] / 1e6:.1f} MB on disk)"
            )
        else:
            print(f"{row['name']:<14} missing")
        print(f"{'':<14} {row['description']}")
        if not row["found"]:
            print(f"{'':<14} {row['hint']}")
    print("imagefolder:PATH  any ImageNet-style folder of class subfolders (PATH/train, PATH/val)")
    return 0


def _cmd_id_encode(args: argparse.Namespace) -> int:
    from activedaemon.identity import IdentityCodec, bits_to_str

    print(bits_to_str(IdentityCodec().encode(args.user_id)))
    return 0


def _cmd_id_decode(args: argparse.Namespace) -> int:
    from activedaemon.identity import IdentityCodec, str_to_bits

    text = sys.stdin.read() if args.bits == "-" else args.bits
    result = IdentityCodec().decode_detailed(str_to_bits(text))
    if result.user_id is None:
        reason = (
            "uncorrectable (more than 10 flipped bits)"
            if result.message is None
            else (f"the message {result.message!r} is not a printable 8-character id")
        )
        print(f"none: {reason}", file=sys.stderr)
        return 1
    print(result.user_id)
    if args.verbose:
        print(f"corrected bits: {result.corrected_bits}", file=sys.stderr)
    return 0


def _given_flags(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The flags among ``names`` that the user gave (absent or None ones leave presets alone)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _parse_overrides(pairs: list[str]) -> dict:
    import yaml

    values: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        *parents, leaf = key.strip().split(".")  # noise.gaussian_sigma=0.01 sets a nested option
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    return values


def _cmd_train_encoder(args: argparse.Namespace) -> int:
    from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder

    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[args.preset])
    names = ("dataset", "data_root", "steps", "batch_size", "seed", "image_size", "channels")
    values.update(_given_flags(args, (*names, "limit_train")))
    values.update(_parse_overrides(args.set))
    cfg = EncoderTrainConfig.from_dict(values)
    train_encoder(cfg, args.out, progress=not args.quiet)
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    _print_token_report(metrics)
    print(f"encoder written to {args.out} (load it with --encoder {args.out})")
    return 0


TOKEN_REPORT_KEYS = [
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("ergas", "ERGAS"),
    ("lpips", "LPIPS"),
    ("A_dec", "A_dec (% message bits)"),
    ("bit_accuracy", "bit accuracy"),
    ("exact_id_rate", "exact-id rate (%)"),
    ("exact_id_rate_noise0.02", "exact-id rate, noise 0.02 (%)"),
    ("clean_identified_rate", "clean images read as an id (%)"),
    ("token_cosine_same_id_across_images", "token cosine, one id, two images"),
    ("token_cosine_same_image_across_ids", "token cosine, one image, two ids"),
    ("mismatched_token_id_rate", "token moved to another image, id read (%)"),
]


def _print_token_report(metrics: dict) -> None:
    for key, label in TOKEN_REPORT_KEYS:
        value = metrics.get(key)
        shown = "null" if value is None else f"{value:.4f}" if isinstance(value, float) else value
        print(f"{label:<44} {shown}")
    if metrics.get("lpips") is None and metrics.get("lpips_reason"):
        print(f"  LPIPS is null: {metrics['lpips_reason']}")


def _cmd_eval_tokens(args: argparse.Namespace) -> int:
    from activedaemon.data import load_dataset
    from activedaemon.runs import write_json
    from activedaemon.tokens import TokenGenerator
    from activedaemon.tokens.evaluate import evaluate_tokens

    gen = TokenGenerator.load(args.encoder)
    data = load_dataset(
        args.dataset or gen.card.get("dataset", "fashion-mnist"),
        args.data_root,
        size=gen.arch.image_size,
        channels=gen.arch.channels,
        limit_train=0,
        limit_test=args.limit,
    )
    metrics = evaluate_tokens(gen, data.test.images, seed=args.seed)
    metrics.update(encoder=str(args.encoder), dataset=data.name)
    _print_token_report(metrics)
    if args.json:
        write_json(Path(args.json), metrics)
        print(f"written to {args.json}")
    return 0


def _read_images(paths: list[str], gen, resize: bool):
    import torch

    from activedaemon.imageio import read_image

    size, channels = gen.arch.image_size, gen.arch.channels
    return torch.stack([read_image(p, channels, size, resize) for p in paths])


def _cmd_token(args: argparse.Namespace) -> int:
    from activedaemon.imageio import write_png
    from activedaemon.tokens import TokenGenerator

    gen = TokenGenerator.load(args.encoder)
    authorized = gen.embed(_read_images(args.images, gen, args.resize), args.user_id)
    out = Path(args.out)
    for path, image in zip(args.images, authorized, strict=True):
        print(write_png(image, out / (Path(path).stem + ".png")))
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from activedaemon.tokens import TokenGenerator

    gen = TokenGenerator.load(args.encoder)
    for path, user_id in zip(
        args.images, gen.identify(_read_images(args.images, gen, args.resize)), strict=True
    ):
        print(f"{path}\t{user_id if user_id is not None else 'none'}")
    return 0


def _protect_config(args: argparse.Namespace, protected: bool):
    from activedaemon.protect.train import ProtectConfig, load_preset

    values = load_preset(args.preset)
    names = ("dataset", "data_root", "arch", "width", "epochs", "batch_size", "lr", "seed")
    values.update(_given_flags(args, (*names, "limit_train", "encoder")))
    values["poison"] = {**values.get("poison", {}), **_given_flags(args, ("gamma", "strategy"))}
    overrides = _parse_overrides(args.set)
    values["poison"].update(overrides.pop("poison", {}))
    values.update(overrides)
    values["protected"] = protected
    return ProtectConfig.from_dict(values)


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    """`protect` and `train-clean`: one training loop, with or without the poisoned set."""
    from activedaemon.protect.train import train_classifier

    cfg = _protect_config(args, args.protected)
    out = train_classifier(cfg, args.out, progress=not args.quiet)
    if out is not None:  # None on DDP ranks other than 0
        print(f"{'protected' if args.protected else 'clean'} model written to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from activedaemon.evaluate.protection import evaluate_protection
    from activedaemon.runs import write_json

    results = evaluate_protection(
        args.model,
        args.encoder,
        args.clean,
        data_root=args.data_root,
        limit_test=args.limit,
        seed=args.seed,
    )
    path = write_json(Path(args.out) if args.out else Path(args.model) / "results.json", results)
    _print_results(results)
    print(f"written to {path}")
    return 0


def _print_results(results: dict) -> None:
    from activedaemon.evaluate.protection import RESULT_KEYS

    for key in RESULT_KEYS:
        value = results.get(key)
        print(f"{key:<16} {'null' if value is None else f'{value:.4f}'}")
    for row in results.get("per_user", []):
        print(f"  user {row['user_id']!s:<10} A_ad {row['A_ad']:6.2f}  A_dec {row['A_dec']:6.2f}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from activedaemon.demo import run_demo

    results = run_demo(
        args.out,
        train_new_encoder=args.train_encoder,
        epochs=args.epochs,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        seed=args.seed,
        progress=not args.quiet,
    )
    _print_results(results)
    print(f"report: {Path(args.out) / 'report.html'}; results: {Path(args.out) / 'results.json'}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from activedaemon.evaluate.sweep import run_sweep

    overrides = {
        **_parse_overrides(args.set),
        **_given_flags(args, ("epochs", "limit_train", "limit_test")),
    }
    values = None
    if args.values:
        cast = float if args.kind == "gamma" else str
        values = [cast(v) for v in args.values.split(",")]
    path = run_sweep(args.kind, args.out, values, args.preset, overrides, progress=not args.quiet)
    print(path.read_text())
    print(f"written to {path} and {path.with_suffix('.png')}")
    return 0


def _attack_params(pairs: list[str]) -> dict[str, dict]:
    """ATTACK.KEY=VALUE pairs -> {attack: {key: value}}; lists become the tuples attacks take."""
    return {
        attack: {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        for attack, params in _parse_overrides(pairs).items()
    }


def _cmd_attack(args: argparse.Namespace) -> int:
    import logging

    from activedaemon.attacks import list_attacks, threat_model
    from activedaemon.attacks.suite import load_context, run_suite
    from activedaemon.runs import write_json

    known = list_attacks()
    if args.names == ["list"]:
        for name in known:
            print(f"{name:<13} {threat_model(name)}")
        return 0
    names = known if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; attacks: {', '.join(known)}, all, list")
    if not args.model:
        raise ValueError("--model is required (a protected run folder)")
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = load_context(
        args.model, args.encoder, dataset=args.dataset, data_root=args.data_root,
        limit_test=args.limit_test, seed=args.seed, fast=args.fast, out=args.out,
        progress=not args.quiet,
    )  # fmt: skip
    results = run_suite(ctx, names, _attack_params(args.attack_param))
    print(f"without attack: A_ad {ctx.baseline['A_ad']:.2f}  A_ud {ctx.baseline['A_ud']:.2f}")
    for name, r in results["attacks"].items():
        figures = {k: v for k, v in r["metrics"].items() if k not in ("A_ad", "A_ud")}
        shown = "  ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
        )
        print(f"{name:<13} {r['verdict']:<7} {r['target']}\n{'':<13} {shown}")
        for note in r["notes"]:
            print(f"{'':<13} {note}")
    if args.json:
        print(f"written to {write_json(args.json, results)}")
    if args.out:
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import logging

    from activedaemon.schemes import list_schemes
    from activedaemon.schemes.compare import COLUMNS, run_compare

    schemes = [s for s in args.schemes.split(",") if s]
    unknown = [s for s in schemes if s not in list_schemes()]
    if unknown:
        raise ValueError(f"unknown scheme(s) {unknown}; schemes: {', '.join(list_schemes())}")
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {
        **_parse_overrides(args.set),
        **_given_flags(args, ("epochs", "limit_train")),
    }
    attack_params = _attack_params(args.attack_param)
    results = run_compare(
        args.out, schemes, dataset=args.dataset, preset=args.preset, fast=args.fast,
        seed=args.seed, overrides=overrides, limit_test=args.limit_test,
        attacks=tuple(a for a in args.attacks.split(",") if a),
        attack_params=attack_params, progress=not args.quiet,
    )  # fmt: skip
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


# -- deployment: serve, query, users ------------------------------------------------------------
DEFAULT_URL = "http://127.0.0.1:8000"


def _auth_scheme(args: argparse.Namespace):
    """The authenticated-id layout and master secret, or (None, None) for plain ids."""
    if not args.auth_ids:
        return None, None
    from activedaemon.serve.authid import AuthIdScheme
    from activedaemon.serve.server import MASTER_KEY_ENV, read_secret

    hash_bits = args.hash_bits if args.bind_image else 0
    retry = args.retry_bits if args.bind_image else 0
    scheme = AuthIdScheme(user_bits=args.user_bits, hash_bits=hash_bits, retry_bits=retry)
    master = read_secret(MASTER_KEY_ENV, args.master_key_file, "master secret")
    return scheme, master.encode()


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from activedaemon.serve.gate import Limits
    from activedaemon.serve.server import ADMIN_KEY_ENV, build_gatekeeper, read_secret, serve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    admin_key = read_secret(ADMIN_KEY_ENV, args.admin_key_file, "admin key")
    scheme, master = _auth_scheme(args)
    limits = Limits(args.max_images, args.max_bytes, args.max_pixels)
    gate = build_gatekeeper(args.model, args.encoder, args.db, limits, scheme, master)
    serve(gate, admin_key, args.host, args.port)
    return 0


def _service_call(url: str, call):
    """Run a client call; connection failures become clear errors (exit 2)."""
    import httpx

    try:
        return call()
    except httpx.TransportError as e:
        raise ValueError(f"cannot reach the service at {url}: {e}") from e


def _cmd_query(args: argparse.Namespace) -> int:
    import os

    from activedaemon.client import Client, ServiceError

    credential = None
    if args.credential_file:
        credential = Path(args.credential_file).read_text().strip()
    elif os.environ.get("ACTIVEDAEMON_CREDENTIAL"):
        credential = os.environ["ACTIVEDAEMON_CREDENTIAL"].strip()
    if args.user is None and credential is None:
        raise ValueError("give --user ID (or a credential in authenticated-id mode)")
    with Client(args.url, args.user, args.encoder, credential=credential) as client:
        try:
            rows = _service_call(args.url, lambda: client.predict_files(args.images, args.resize))
        except ServiceError as e:
            print(f"{'denied' if e.status == 403 else 'error'}: {e}", file=sys.stderr)
            return 1 if e.status == 403 else 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for path, row in zip(args.images, rows, strict=True):
        print(f"{path}\t{row['label']}\t{row['class_name']}\t{max(row['probabilities']):.3f}")
    return 0


def _cmd_users(args: argparse.Namespace) -> int:
    from activedaemon.client import AdminClient, ServiceError
    from activedaemon.serve.server import ADMIN_KEY_ENV, read_secret

    key = read_secret(ADMIN_KEY_ENV, args.admin_key_file, "admin key")
    admin = AdminClient(args.url, key)
    calls = {
        "add": lambda: admin.add(args.id, args.name),
        "list": admin.list,
        "show": lambda: admin.show(args.id),
        "revoke": lambda: admin.revoke(args.id),
        "activate": lambda: admin.activate(args.id),
    }
    try:
        result = _service_call(args.url, calls[args.users_command])
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json or args.users_command == "show":
        print(json.dumps(result, indent=2))
    elif args.users_command == "list":
        for u in result:
            print(f"{u['user_id']}\t{u['status']}\t{u['created_at']}\t{u['name']}")
    else:
        print(f"{result['user_id']}\t{result['status']}")
        if result.get("credential"):
            print(f"credential (give it to the user; shown once): {result['credential']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activedaemon",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from activedaemon import __version__

    parser.add_argument("--version", action="version", version=f"activedaemon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "datasets",
        help="list the data sets, where each was looked for, and whether it was found",
        description="List every registered data set: where it was looked for, whether it was "
        "found, its size on disk, and how to get it when missing. Fashion-MNIST comes offline "
        "from the Debian package dataset-fashion-mnist; the others are read in torchvision's "
        "on-disk formats under --data-root.",
    )
    p.add_argument(
        "--data-root",
        help="folder of data sets in torchvision's layout (default: $ACTIVEDAEMON_DATA or ./data)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_datasets)

    p_id = sub.add_parser(
        "id",
        help="turn user ids into BCH(127,64) codewords and back",
        description="A user id is exactly 8 printable ASCII characters (64 bits); BCH(127,64) "
        "adds 63 parity bits so that any 10 flipped bits are corrected.",
    )
    id_sub = p_id.add_subparsers(dest="id_command", metavar="ACTION", required=True)
    p = id_sub.add_parser(
        "encode",
        help="print the 127-bit codeword of a user id",
        description="Print the 127-bit codeword (a line of 0/1) of an 8-character user id.",
    )
    p.add_argument(
        "user_id", metavar="ID", help="exactly 8 printable ASCII characters, e.g. SRJu2W7V"
    )
    p.set_defaults(func=_cmd_id_encode)
    p = id_sub.add_parser(
        "decode",
        help="print the user id held by 127 bits (corrects up to 10 flipped bits)",
        description="Decode 127 characters of 0/1 (whitespace ignored; '-' reads stdin) to the "
        "user id. Exits 1 and prints 'none' with the reason when the word holds no id.",
    )
    p.add_argument("bits", metavar="BITS", help="127 characters of 0/1, or - to read stdin")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also print the corrected bit count"
    )
    p.set_defaults(func=_cmd_id_decode)

    p = sub.add_parser(
        "train-encoder",
        help="train the token encoder, decoder and critic (Algorithm 1)",
        description="Train the token generator (paper Algorithm 1) and write a run folder that is "
        "also a loadable encoder: config.yaml, run.json (seed, commit, metrics), card.yaml, "
        "weights.pt, train_log.json, samples.png. Presets: cpu (Fashion-MNIST 32x32x3, about 6 "
        "minutes on 2 cores), cpu-grey28, tiny (seconds), gpu-paper. Any option of "
        "EncoderTrainConfig can be set with --set KEY=VALUE.",
    )
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--preset", default="cpu", help="cpu (default), cpu-grey28, tiny, gpu-paper")
    p.add_argument("--dataset", help="data set name or imagefolder:PATH (default fashion-mnist)")
    p.add_argument("--data-root", help="folder of data sets (see `activedaemon datasets`)")
    p.add_argument("--steps", type=int, help="training steps (preset cpu: 4200)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, help="random seed (default 0), recorded in run.json")
    p.add_argument("--image-size", type=int, help="square image size, a multiple of 4")
    p.add_argument("--channels", type=int, choices=[1, 3])
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other option, e.g. --set w_mismatch=1.0 --set noise.jpeg_quality=75",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_encoder)

    p = sub.add_parser(
        "eval-tokens",
        help="stealth and decoding report of an encoder (PSNR, SSIM, ERGAS, LPIPS, A_dec, ...)",
        description="Embed fresh random ids (never seen in training) into test images and report "
        "PSNR, SSIM, ERGAS, LPIPS (null with the reason where its weights cannot load), A_dec, "
        "the exact-id rate clean and after Gaussian noise 0.02, how often clean images read as "
        "an id, token distinctness, and how often a token moved to another image still reads.",
    )
    p.add_argument("--encoder", required=True, help="encoder run folder or shipped name")
    p.add_argument("--dataset", help="default: the encoder's training data set")
    p.add_argument("--data-root")
    p.add_argument("--limit", type=int, default=2000, help="test images to use (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report to this JSON file")
    p.set_defaults(func=_cmd_eval_tokens)

    p = sub.add_parser(
        "token",
        help="write authorized copies of images for a user id",
        description="Embed USER's invisible token into each image and write 8-bit PNGs to --out "
        "(same file stems). Images must be at the encoder's size unless --resize is given.",
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--encoder", required=True, help="encoder run folder or shipped name")
    p.add_argument("--user-id", required=True, help="8 printable ASCII characters")
    p.add_argument("--out", required=True, help="folder for the authorized PNGs")
    p.add_argument("--resize", action="store_true", help="resize images to the encoder's size")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser(
        "identify",
        help="print the user id each image carries, or none",
        description="Decode each image's token and print PATH<TAB>ID, or PATH<TAB>none for clean "
        "or damaged images (BCH corrects up to 10 flipped bits).",
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--encoder", required=True, help="encoder run folder or shipped name")
    p.add_argument("--resize", action="store_true", help="resize images to the encoder's size")
    p.set_defaults(func=_cmd_identify)

    def add_training_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="run folder to write")
        p.add_argument(
            "--preset",
            default="cpu-small",
            help="a preset of activedaemon/configs (cpu-small, tiny, gpu-paper-cifar10, "
            "gpu-paper-cifar100, gpu-paper-gtsrb, gpu-paper-imagenet) or a YAML file",
        )
        p.add_argument("--dataset", help="data set name or imagefolder:PATH")
        p.add_argument("--data-root", help="folder of data sets (see `activedaemon datasets`)")
        p.add_argument("--arch", help="resnet18 (CIFAR stem), resnet50, or torchvision:NAME")
        p.add_argument("--width", type=int, help="ResNet base width (64 = standard; cpu-small 16)")
        p.add_argument("--epochs", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--limit-train", type=int, help="use only the first N training images")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any ProtectConfig option, e.g. --set poison.noise_fraction=0.5",
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "protect",
        help="train a protected classifier on the poisoned set (Algorithm 2)",
        description="Build the poisoned training set (gamma authorized with true labels; the "
        "rest clean, noised or carrying another image's token, with labels changed by the "
        "strategy) and train a classifier on it. Runs under torchrun for DDP "
        "(e.g. torchrun --nproc_per_node 2 -m activedaemon.cli protect ...). The epoch is "
        "chosen on a held-out validation split.",
    )
    add_training_flags(p)
    p.add_argument("--encoder", default=None, help="encoder run folder or shipped name "
                   "(default fashion-mnist-32)")  # fmt: skip
    p.add_argument("--strategy", help="single (default), random, near, surjective")
    p.add_argument("--gamma", type=float, help="fraction of authorized samples (default 0.2)")
    p.set_defaults(func=_cmd_train_classifier, protected=True)

    p = sub.add_parser(
        "train-clean",
        help="train the unprotected baseline (gives A_or)",
        description="Train the same classifier on the clean training set with true labels.",
    )
    add_training_flags(p)
    p.set_defaults(func=_cmd_train_classifier, protected=False)

    p = sub.add_parser(
        "evaluate",
        help="measure A_or, A_ad, A_ud, A_od, A_pd, A_dec, stealth, fake and moved tokens",
        description="Evaluate a protected run on its data set's test split and write "
        "results.json (into the model's run folder unless --out is given).",
    )
    p.add_argument("--model", required=True, help="protected run folder")
    p.add_argument("--encoder", default="fashion-mnist-32", help="encoder run or shipped name")
    p.add_argument("--clean", help="clean baseline run folder (for A_or, A_od)")
    p.add_argument("--data-root")
    p.add_argument("--limit", type=int, help="use only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results file (default MODEL/results.json)")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on Fashion-MNIST (CPU preset): train, protect, evaluate, report",
        description="Load the shipped encoder (or train one with --train-encoder), train the "
        "clean baseline and the protected model (width-16 ResNet-18, 5 epochs each), evaluate, "
        "and write OUT/clean/, OUT/protected/, OUT/results.json and OUT/report.html. About 9 "
        "minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--train-encoder", action="store_true", help="train the encoder (+6 min)")
    p.add_argument("--epochs", type=int, help="epochs for both models (default 5)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, help="use only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser(
        "sweep",
        help="protect + evaluate over label strategies (Table II) or gamma values (Fig. 2)",
        description="Train one clean baseline and one protected model per value, evaluate each, "
        "and write OUT/sweep.csv and OUT/sweep.png (run folders beside them).",
    )
    p.add_argument("kind", choices=["strategy", "gamma"])
    p.add_argument("--out", required=True)
    p.add_argument("--values", help="comma-separated (default: all strategies, or gamma "
                   "0.01,0.05,0.1,0.2,0.5,0.8,0.99)")  # fmt: skip
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--epochs", type=int)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser(
        "attack",
        help="run attacks on a protected model (fake, deteriorated, moved, reverse-engineered, "
        "stolen tokens, extraction, fine-tuning, pruning, Grad-CAM, transit)",
        description="Run one or more attacks (or 'all') against a protected run and print each "
        "one's verdict against its target; 'activedaemon attack list' shows every attack with "
        "its threat model. With --out, writes OUT/attacks.json, one figure per attack and "
        "OUT/report.html. 'all' takes about 30 minutes on 2 CPU cores at the defaults (the "
        "dormancy audit about 11); --fast shrinks every attack (seconds).",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="attack names, 'all' or 'list'")
    p.add_argument("--model", help="protected run folder")
    p.add_argument("--encoder", default="fashion-mnist-32", help="encoder run or shipped name")
    p.add_argument("--dataset", help="data set (default: the model's own)")
    p.add_argument("--data-root")
    p.add_argument("--limit-test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="small settings (seconds per attack)")
    p.add_argument("--out", help="folder for attacks.json, figures and report.html")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument(
        "--attack-param",
        action="append",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="an attack's parameter: reverse.steps=1000, dormancy.percents=[1,10]",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_attack)
    p = sub.add_parser(
        "compare",
        help="ActiveDaemon beside M-LOCK, ADIP, DeepIPR passports and ChaoW (Tables I, III, X)",
        description="Train one clean baseline and every scheme on the same data and model, "
        "measure A_or, A_ad, A_ud, A_od, A_pd, A_fk, PSNR/SSIM/ERGAS, params and FLOPs, run the "
        "attacks that apply, and write OUT/compare.json, compare.csv, report.html, samples.png "
        "and pruning.png. --fast: tiny subsets, 1 epoch (seconds).",
    )
    p.add_argument("--schemes", default="activedaemon,mlock,adip,passport,chaow")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--attacks", default="pruning,gaussian,finetune,extraction")
    p.add_argument(
        "--attack-param",
        action="append",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="cap an attack: extraction.queries=1000, finetune.percents=[1,5]",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="tiny subsets, 1 epoch, small attacks")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "serve",
        help="serve the protected model: answers only registered users' tokened queries",
        description="Start the HTTP service (FastAPI + uvicorn; OpenAPI docs at /docs). "
        "POST /v1/predict decodes the user id from each image, checks it in the registry and "
        "only then classifies. Owner endpoints need the header X-Admin-Key; the key comes from "
        "$ACTIVEDAEMON_ADMIN_KEY or --admin-key-file; the service refuses to start without one.",
    )
    p.add_argument("--model", required=True, help="protected classifier run folder")
    p.add_argument("--encoder", required=True, help="encoder run folder or shipped name")
    p.add_argument("--db", default="sqlite:///activedaemon-users.db",
                   help="registry URL: sqlite:///PATH (default ./activedaemon-users.db) or "
                   "postgresql+psycopg://USER:PASS@HOST/DB")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-key-file", help="file holding the admin key (else the env variable)")
    p.add_argument("--max-images", type=int, default=64, help="images per request (default 64)")
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="bytes per image file")
    p.add_argument("--max-pixels", type=int, default=4_000_000, help="pixels per image")
    p.add_argument("--auth-ids", action="store_true",
                   help="authenticated ids: tokens carry a user number + HMAC under a per-user "
                   "key derived from the master secret ($ACTIVEDAEMON_MASTER_KEY or "
                   "--master-key-file); users get a credential at registration")  # fmt: skip
    p.add_argument("--master-key-file")
    p.add_argument("--user-bits", type=int, default=20, help="bits of the user number (20)")
    p.add_argument("--bind-image", action="store_true",
                   help="the MAC also covers a coarse hash of the image")  # fmt: skip
    p.add_argument("--hash-bits", type=int, default=16, help="image hash bits (16)")
    p.add_argument("--retry-bits", type=int, default=4,
                   help="least certain hash bits the server tries flipping (4)")  # fmt: skip
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "query",
        help="add your token to images and ask the service to classify them",
        description="Make USER's token locally with the distributed encoder, send the images "
        "to the service, and print PATH<TAB>label<TAB>class<TAB>confidence. Exits 1 when the "
        "service denies the query (403). In authenticated-id mode pass the credential with "
        "--credential-file or $ACTIVEDAEMON_CREDENTIAL.",
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    p.add_argument("--user", help="your 8-character user id")
    p.add_argument("--encoder", required=True, help="encoder run folder or shipped name")
    p.add_argument("--credential-file", help="authenticated-id mode: file with the credential")
    p.add_argument("--resize", action="store_true", help="resize images to the encoder's size")
    p.add_argument("--json", action="store_true", help="print the service's JSON")
    p.set_defaults(func=_cmd_query)

    p_users = sub.add_parser(
        "users",
        help="owner: add, list, show, revoke, activate users of a running service",
        description="Owner calls to a running service. The admin key comes from "
        "$ACTIVEDAEMON_ADMIN_KEY or --admin-key-file.",
    )
    users_sub = p_users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for action, text in [
        ("add", "register a user (random id unless --id is given)"),
        ("list", "list users"),
        ("show", "one user with usage counts"),
        ("revoke", "revoke a user (effective on the next query)"),
        ("activate", "re-activate a revoked user"),
    ]:
        p = users_sub.add_parser(action, help=text, description=text)
        if action == "add":
            p.add_argument("--id", help="8 printable ASCII characters (default: random)")
            p.add_argument("--name", default="", help="display name")
        elif action != "list":
            p.add_argument("id", metavar="ID")
        p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
        p.add_argument("--admin-key-file")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_cmd_users)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"activedaemon: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
