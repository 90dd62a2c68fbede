"""`activedaemon datasets`: where each registered data set was looked for, and whether found."""

from __future__ import annotations

import argparse

from activedaemon.cli.common import add_command, add_data_flags, add_json, emit_json, json_only


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
