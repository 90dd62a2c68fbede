"""The single `activedaemon` entry point: parses arguments, checks names, calls the library,
prints.

One module per command group registers its subcommands (``add_parsers``) and holds their
command functions; common.py holds the shared flags and checks. Command functions import the
library lazily, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from activedaemon.cli import datasets, evaluation, ids, service, tokens, training

DESCRIPTION = """\
ActiveDaemon: image classifiers that answer correctly only for queries carrying an invisible,
user-specific token (NDSS paper "ActiveDaemon: Unconscious DNN Dormancy and Waking Up via
User-specific Invisible Token").
"""

# In the order of `activedaemon --help`.
COMMAND_GROUPS = (datasets, ids, tokens, training, evaluation, service)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activedaemon",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from activedaemon import __version__

    parser.add_argument("--version", action="version", version=f"activedaemon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"activedaemon: error: {e}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
