"""`activedaemon id encode|decode`: user ids as BCH(127,64) codewords and back."""

from __future__ import annotations

import argparse
import sys

from activedaemon.cli.common import add_command


def add_parsers(sub) -> None:
    p_id = add_command(
        sub,
        "id",
        help="turn user ids into BCH(127,64) codewords and back",
        description="A user id is exactly 8 printable ASCII characters (64 bits); BCH(127,64) "
        "adds 63 parity bits so that any 10 flipped bits are corrected.",
    )
    id_sub = p_id.add_subparsers(dest="id_command", metavar="ACTION", required=True)
    p = add_command(
        id_sub,
        "encode",
        help="print the 127-bit codeword of a user id",
        description="Print the 127-bit codeword (a line of 0/1) of an 8-character user id.",
    )
    p.add_argument(
        "user_id", metavar="ID", help="exactly 8 printable ASCII characters, e.g. SRJu2W7V"
    )
    p.set_defaults(func=cmd_id_encode)
    p = add_command(
        id_sub,
        "decode",
        help="print the user id held by 127 bits (corrects up to 10 flipped bits)",
        description="Decode 127 characters of 0/1 (whitespace ignored; '-' reads stdin) to the "
        "user id. Exits 1 and prints 'none' with the reason when the word holds no id.",
    )
    p.add_argument("bits", metavar="BITS", help="127 characters of 0/1, or - to read stdin")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also print the corrected bit count"
    )
    p.set_defaults(func=cmd_id_decode)


def cmd_id_encode(args: argparse.Namespace) -> int:
    from activedaemon.identity import IdentityCodec, bits_to_str

    print(bits_to_str(IdentityCodec().encode(args.user_id)))
    return 0


def cmd_id_decode(args: argparse.Namespace) -> int:
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
