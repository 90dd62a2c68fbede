"""The single `activedaemon` entry point: parses arguments, calls the library, prints."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
