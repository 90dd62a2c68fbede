"""The token generator: `train-encoder`, `eval-tokens`, `token` and `identify`."""

from __future__ import annotations

import argparse
from pathlib import Path

from activedaemon.cli.common import (
    CONFIG_DIR,
    add_command,
    add_data_flags,
    add_encoder,
    add_flag,
    add_json,
    add_out,
    add_quiet,
    add_seed,
    add_set,
    add_stream_flags,
    check_dataset,
    check_names,
    check_user_id,
    emit_json,
    given_flags,
    json_only,
    parse_overrides,
    positive_int,
    preset_names,
)


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "train-encoder",
        help="train the token encoder, decoder and critic (Algorithm 1)",
        description="Train the token generator (paper Algorithm 1) and write a run folder that is "
        "also a loadable encoder: config.yaml, run.json (seed, commit, metrics), card.yaml, "
        "weights.pt, train_log.json, samples.png. The default preset, cpu, trains on "
        "Fashion-MNIST at 32x32x3 in about 6 minutes on 2 cores; the presets are the YAML files "
        "of activedaemon/configs/encoders. Any option of EncoderTrainConfig can be set with "
        "--set KEY=VALUE.",
    )
    add_out(p, "run folder to write", required=True)
    p.add_argument(
        "--preset",
        default="cpu",
        help="encoder training preset: "
        f"{', '.join(preset_names(CONFIG_DIR / 'encoders'))} (default cpu)",
    )
    add_data_flags(
        p,
        dataset="data set name or imagefolder:PATH (default fashion-mnist; see "
        "`activedaemon datasets`)",
        limit_train=True,
    )
    p.add_argument("--steps", type=positive_int, help="training steps (preset cpu: 4200)")
    p.add_argument("--batch-size", type=positive_int)
    add_seed(p, default=None, help="random seed (default 0), recorded in run.json")
    p.add_argument("--image-size", type=positive_int, help="square image size, a multiple of 4")
    p.add_argument("--channels", type=int, choices=[1, 3])
    add_stream_flags(p)
    add_set(p, "any other option, e.g. --set w_mismatch=1.0 --set noise.jpeg_quality=75")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=cmd_train_encoder)

    p = add_command(
        sub,
        "eval-tokens",
        help="stealth and decoding report of an encoder (PSNR, SSIM, ERGAS, LPIPS, A_dec, ...)",
        description="Embed fresh random ids (never seen in training) into test images and report "
        "PSNR, SSIM, ERGAS, LPIPS (null with the reason where its weights cannot load), A_dec, "
        "the exact-id rate clean, after Gaussian noise 0.01 and 0.02 and after JPEG 90 and 75, "
        "how often clean images read as "
        "an id, token distinctness, and how often a token moved to another image still reads.",
    )
    add_encoder(p, required=True)
    add_data_flags(
        p,
        dataset="data set (default: the encoder's training data set)",
        limit_test=True,
        limit_test_default=2000,
        limit_test_aliases=("--limit",),
    )
    add_seed(p)
    add_json(p, "the report")
    p.set_defaults(func=cmd_eval_tokens)

    p = add_command(
        sub,
        "token",
        help="write authorized copies of images for a user id",
        description="Embed USER's invisible token into each image and write 8-bit PNGs to --out "
        "(same file stems). Images must be at the encoder's size unless --resize is given.",
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    add_encoder(p, required=True)
    add_flag(
        p,
        "--user",
        aliases=("--user-id",),
        required=True,
        help="the user id: 8 printable ASCII characters",
    )
    add_out(p, "folder for the authorized PNGs", required=True)
    p.add_argument("--resize", action="store_true", help="resize images to the encoder's size")
    p.set_defaults(func=cmd_token)

    p = add_command(
        sub,
        "identify",
        help="print the user id each image carries, or none",
        description="Decode each image's token and print PATH<TAB>ID, or PATH<TAB>none for clean "
        "or damaged images (BCH corrects up to 10 flipped bits).",
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    add_encoder(p, required=True)
    p.add_argument("--resize", action="store_true", help="resize images to the encoder's size")
    p.set_defaults(func=cmd_identify)


TOKEN_REPORT_KEYS = [
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("ergas", "ERGAS"),
    ("lpips", "LPIPS"),
    ("A_dec", "A_dec (% message bits)"),
    ("bit_accuracy", "bit accuracy"),
    ("exact_id_rate", "exact-id rate (%)"),
    ("exact_id_rate_noise0.01", "exact-id rate, noise 0.01 (%)"),
    ("exact_id_rate_noise0.02", "exact-id rate, noise 0.02 (%)"),
    ("exact_id_rate_jpeg90", "exact-id rate, JPEG 90 (%)"),
    ("exact_id_rate_jpeg75", "exact-id rate, JPEG 75 (%)"),
    ("clean_identified_rate", "clean images read as an id (%)"),
    ("token_cosine_same_id_across_images", "token cosine, one id, two images"),
    ("token_cosine_same_image_across_ids", "token cosine, one image, two ids"),
    ("mismatched_token_id_rate", "token moved to another image, id read (%)"),
]


def print_token_report(metrics: dict) -> None:
    for key, label in TOKEN_REPORT_KEYS:
        value = metrics.get(key)
        shown = "null" if value is None else f"{value:.4f}" if isinstance(value, float) else value
        print(f"{label:<44} {shown}")
    if metrics.get("lpips") is None and metrics.get("lpips_reason"):
        print(f"  LPIPS is null: {metrics['lpips_reason']}")


def cmd_train_encoder(args: argparse.Namespace) -> int:
    import json

    check_dataset(args.dataset)  # before the slower imports; --set dataset= is checked below
    from activedaemon.tokens.train import PRESETS, EncoderTrainConfig, train_encoder

    check_names("encoder preset", [args.preset], list(PRESETS))
    values = dict(PRESETS[args.preset])
    names = ("dataset", "data_root", "steps", "batch_size", "seed", "image_size", "channels")
    values.update(given_flags(args, (*names, "limit_train", "stream", "workers")))
    values.update(parse_overrides(args.set))
    try:
        cfg = EncoderTrainConfig.from_dict(values)
    except TypeError as e:  # an unknown key of a nested option (noise)
        raise ValueError(f"bad option: {e}") from None
    cfg.arch()  # checks image_size and channels
    train_encoder(cfg, args.out, progress=not args.quiet)
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    print_token_report(metrics)
    print(f"encoder written to {args.out} (load it with --encoder {args.out})")
    return 0


def cmd_eval_tokens(args: argparse.Namespace) -> int:
    check_dataset(args.dataset)
    from activedaemon.data import load_dataset
    from activedaemon.tokens import TokenGenerator
    from activedaemon.tokens.evaluate import evaluate_tokens

    gen = TokenGenerator.load(args.encoder)
    data = load_dataset(
        args.dataset or gen.card.get("dataset", "fashion-mnist"),
        args.data_root,
        size=gen.arch.image_size,
        channels=gen.arch.channels,
        limit_train=0,
        limit_test=args.limit_test,
    )
    metrics = evaluate_tokens(gen, data.test.images, seed=args.seed)
    metrics.update(encoder=str(args.encoder), dataset=data.name)
    if not json_only(args):
        print_token_report(metrics)
    emit_json(args.json, metrics)
    return 0


def read_images(paths: list[str], gen, resize: bool):
    import torch

    from activedaemon.imageio import read_image

    size, channels = gen.arch.image_size, gen.arch.channels
    return torch.stack([read_image(p, channels, size, resize) for p in paths])


def cmd_token(args: argparse.Namespace) -> int:
    check_user_id(args.user)
    from activedaemon.imageio import write_png
    from activedaemon.tokens import TokenGenerator

    gen = TokenGenerator.load(args.encoder)
    authorized = gen.embed(read_images(args.images, gen, args.resize), args.user)
    out = Path(args.out)
    for path, image in zip(args.images, authorized, strict=True):
        print(write_png(image, out / (Path(path).stem + ".png")))
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from activedaemon.tokens import TokenGenerator

    gen = TokenGenerator.load(args.encoder)
    for path, user_id in zip(
        args.images, gen.identify(read_images(args.images, gen, args.resize)), strict=True
    ):
        print(f"{path}\t{user_id if user_id is not None else 'none'}")
    return 0
