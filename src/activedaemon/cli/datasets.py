"""`activedaemon datasets`: where each registered data set was looked for, and whether found."""

from __future__ import annotations

import argparse

from activedaemon.cli.common import (
    add_command,
    add_data_flags,
    add_json,
    add_seed,
    emit_json,
    json_only,
    positive_int,
)


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "datasets",
        help="list the data sets, where each was looked for, and whether it was found",
        description="List every registered data set: where it was looked for, whether it was "
        "found, its size on disk, and how to get it when missing. Fashion-MNIST comes offline "
        "from the Debian package dataset-fashion-mnist; the others are read in torchvision's "
        "on-disk formats under --data-root.",
    )
    add_data_flags(p, dataset=None)
    add_json(p, "the list")
    p.set_defaults(func=cmd_datasets)

    p = add_command(
        sub,
        "photos",
        help="write a small natural-photo image folder (patches of scikit-image's photos)",
        description="Cut square patches from six colour photos that scikit-image ships (one "
        "class per photo; training patches from the left 75 %% of each photo, test patches from "
        "the right 25 %%) and write them as OUT/train/<photo>/*.png and OUT/val/<photo>/*.png, "
        "for --dataset imagefolder:OUT. The same seed writes the same files.",
    )
    p.add_argument("--out", required=True, help="a new (or empty) folder")
    p.add_argument("--size", type=positive_int, default=32, help="patch side in pixels (32)")
    p.add_argument("--train-per-class", type=positive_int, default=1500, help="(default 1500)")
    p.add_argument("--test-per-class", type=positive_int, default=300, help="(default 300)")
    add_seed(p)
    p.set_defaults(func=cmd_photos)


def cmd_datasets(args: argparse.Namespace) -> int:
    from activedaemon.data import dataset_status

    rows = dataset_status(args.data_root)
    if json_only(args):
        emit_json("-", rows)
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
    emit_json(args.json, rows)
    return 0


def cmd_photos(args: argparse.Namespace) -> int:
    from activedaemon.data.photos import PHOTOS, build_photo_folder

    try:
        out = build_photo_folder(
            args.out, args.size, args.train_per_class, args.test_per_class, args.seed
        )
    except ImportError as e:
        raise ValueError(str(e)) from e
    n_train, n_test = args.train_per_class * len(PHOTOS), args.test_per_class * len(PHOTOS)
    print(f"wrote {out}: {n_train} training and {n_test} test images, {args.size} px")
    print(f"classes: {', '.join(PHOTOS)}")
    print(f"use it with --dataset imagefolder:{out} --set image_size={args.size}")
    return 0
