"""User identity <-> BCH(127, 64) codeword (paper Sec. III-B1).

An 8-character user id is 8 ASCII bytes = 64 message bits; BCH(127, 64) with t = 10 adds 63 parity
bits, so the 127-bit codeword survives any 10 flipped bits. Bit order: the 64 message bits (MSB
first per byte), then the 63 parity bits as bchlib computes them.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import bchlib
import numpy as np
import torch

ID_LENGTH = 8
MESSAGE_BITS = 64
CODE_BITS = 127
CORRECTABLE_BITS = 10
PARITY_BITS = CODE_BITS - MESSAGE_BITS

# Printable ASCII without control characters: space (0x20) to tilde (0x7E).
PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))
ALPHABETS = {
    "alnum": string.ascii_letters + string.digits,
    # All printable characters except space, which is awkward on command lines.
    "ascii": string.ascii_letters + string.digits + string.punctuation,
}


@dataclass(frozen=True)
class DecodeResult:
    """What the decoder made of one received word.

    ``user_id`` is None when the word is uncorrectable or its message is not a valid id (the
    all-zero word, what a clean image tends to decode to, is a codeword whose message is not).
    """

    user_id: str | None
    message: bytes | None  # the corrected 8 message bytes, or None when uncorrectable
    corrected_bits: int  # flipped bits the decoder fixed; -1 when uncorrectable


def validate_user_id(user_id: str) -> str:
    """Return ``user_id`` unchanged, or raise ValueError saying what is wrong with it."""
    if not isinstance(user_id, str):
        raise ValueError(f"a user id must be a str, got {type(user_id).__name__}")
    if len(user_id) != ID_LENGTH:
        raise ValueError(
            f"a user id must be exactly {ID_LENGTH} characters, got {len(user_id)}: {user_id!r}"
        )
    bad = sorted({c for c in user_id if c not in PRINTABLE})
    if bad:
        raise ValueError(
            f"a user id may hold only printable ASCII (0x20-0x7E); {user_id!r} has {bad!r}"
        )
    return user_id


def random_user_id(rng: random.Random | None = None, alphabet: str = "alnum") -> str:
    """A random id: ``alnum`` = letters and digits (36^8 ids as in the paper), ``ascii`` = all
    printable characters but space."""
    if alphabet not in ALPHABETS:
        raise ValueError(f"unknown alphabet {alphabet!r}; choose one of {sorted(ALPHABETS)}")
    rng = rng or random.Random()
    return "".join(rng.choice(ALPHABETS[alphabet]) for _ in range(ID_LENGTH))


def _as_bit_array(bits: torch.Tensor | np.ndarray | list, ndim: int) -> np.ndarray:
    """Validate hard bits or probabilities in [0, 1] and threshold them at 0.5."""
    arr = np.asarray(bits.detach().cpu() if isinstance(bits, torch.Tensor) else bits, np.float64)
    if arr.ndim != ndim or arr.shape[-1] != CODE_BITS:
        want = f"({CODE_BITS},)" if ndim == 1 else f"(N, {CODE_BITS})"
        raise ValueError(f"expected bits of shape {want}, got {tuple(arr.shape)}")
    if np.isnan(arr).any():
        raise ValueError("bits contain NaN")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError("bits must be 0/1 or probabilities in [0, 1]")
    return (arr > 0.5).astype(np.uint8)


class IdentityCodec:
    """BCH(127, 64), t = 10, via bchlib; encodes 8-character ids and decodes received words."""

    def __init__(self) -> None:
        self._bch = bchlib.BCH(t=CORRECTABLE_BITS, m=7)
        # bchlib stores the 63 parity bits in 9 bytes (the tail is zero padding).
        assert self._bch.n == CODE_BITS and self._bch.ecc_bits == PARITY_BITS

    # -- message level (64 bits); the id layer and later authenticated ids sit on top -----------
    def encode_message(self, message: bytes) -> torch.Tensor:
        """8 message bytes -> 127-bit codeword as a float tensor of 0/1."""
        if len(message) != MESSAGE_BITS // 8:
            raise ValueError(f"a message is {MESSAGE_BITS // 8} bytes, got {len(message)}")
        ecc = self._bch.encode(bytes(message))
        bits = np.unpackbits(np.frombuffer(bytes(message) + ecc, np.uint8))[:CODE_BITS]
        return torch.from_numpy(bits.astype(np.float32))

    def _decode_hard(self, hard: np.ndarray) -> tuple[bytes | None, int]:
        packed = np.packbits(np.concatenate([hard, np.zeros(8 * 17 - CODE_BITS, np.uint8)]))
        data, ecc = bytearray(packed[:8].tobytes()), bytearray(packed[8:].tobytes())
        if self._bch.decode(data, ecc) < 0:
            return None, -1
        self._bch.correct(data, ecc)
        # Beyond t errors bchlib sometimes reports success with a "corrected" word that is not a
        # codeword within t of what was received (about 3 % of words with 11-20 flips): re-encode
        # and accept only a codeword within distance t.
        distance = int((self.encode_message(bytes(data)).numpy().astype(np.uint8) != hard).sum())
        if distance > CORRECTABLE_BITS:
            return None, -1
        return bytes(data), distance

    # -- id level -------------------------------------------------------------------------------
    def encode(self, user_id: str) -> torch.Tensor:
        """User id -> codeword of shape (127,), values 0./1."""
        return self.encode_message(validate_user_id(user_id).encode("ascii"))

    def encode_batch(self, user_ids: list[str]) -> torch.Tensor:
        """Ids -> codewords of shape (N, 127)."""
        if not user_ids:
            return torch.zeros(0, CODE_BITS)
        return torch.stack([self.encode(u) for u in user_ids])

    def decode_detailed(self, bits: torch.Tensor | np.ndarray | list) -> DecodeResult:
        """Decode one word of hard bits or probabilities, shape (127,)."""
        message, nerr = self._decode_hard(_as_bit_array(bits, ndim=1))
        return DecodeResult(_message_to_id(message), message, nerr)

    def decode(self, bits: torch.Tensor | np.ndarray | list) -> str | None:
        """Decode one word (shape (127,)) to its user id, or None if it holds none."""
        return self.decode_detailed(bits).user_id

    def decode_batch(self, bits: torch.Tensor | np.ndarray) -> list[str | None]:
        """Decode words of shape (N, 127) to ids (None where a word holds none)."""
        hard = _as_bit_array(bits, ndim=2)
        return [_message_to_id(self._decode_hard(row)[0]) for row in hard]


def _message_to_id(message: bytes | None) -> str | None:
    if message is None or not all(chr(b) in PRINTABLE for b in message):
        return None
    return message.decode("ascii")


def bits_to_str(bits: torch.Tensor) -> str:
    """Codeword -> '0101...' (127 characters), the CLI's text form."""
    return "".join(str(int(b)) for b in bits.round().tolist())


def str_to_bits(text: str) -> torch.Tensor:
    """'0101...' (127 characters of 0/1, whitespace ignored) -> float tensor."""
    digits = "".join(text.split())
    if len(digits) != CODE_BITS or set(digits) - {"0", "1"}:
        raise ValueError(
            f"expected {CODE_BITS} characters of 0/1, got {len(digits)} characters"
            + (
                f" including {sorted(set(digits) - {'0', '1'})!r}"
                if set(digits) - {"0", "1"}
                else ""
            )
        )
    return torch.tensor([float(c) for c in digits])
