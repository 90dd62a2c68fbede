"""Authenticated ("unforgeable") ids: the 64 message bits carry a user number and a MAC.

Beyond the paper, optional. The 64-bit message the token carries is
``number (user_bits) || HMAC-SHA256(k_n, number [|| image hash])`` truncated to ``64 - user_bits``
bits, where ``k_n = HMAC-SHA256(K, epoch || n || salt_n)`` is user n's key, with ``K`` the master
secret stretched by scrypt (a short master cannot be brute-forced cheaply from one user's own
key), ``epoch`` a random value made with the registry and ``salt_n`` a random salt stored with
user n: a number issued again after a registry reset or an old backup's restore gets another key,
so an old credential is not answered as the new holder of its number (:func:`user_key_v2`; users
registered before the salts keep ``k_n = HMAC-SHA256(master, n)``, :func:`user_key`). The owner
derives every key, each user holds only their own, and one user's leak exposes no other. An attacker
who invents a number or flips bits of a seen message must guess the MAC (probability
``2 ** -mac_bits`` per try).

A MAC over the number alone stops invented ids but not replay: the decoder ships with the encoder,
so anyone who holds one authorized image reads its message and can put that message on any other
image. Binding the MAC to a coarse hash of the image (:func:`image_hash`, recomputed by the server
on the image it receives) makes a lifted token fail on most other images. The hash must survive the
token itself (and mild JPEG), so it is coarse; the server also tries the ``2 ** retry_bits``
hashes that flip its least certain bits, which costs ``retry_bits`` bits of MAC security.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MESSAGE_BITS = 64
HASH_GRID = 8  # the grey image is averaged to 8 x 8 blocks before the DCT
KEY_DOMAIN = b"activedaemon/user-key/v1"
KEY_DOMAIN_V2 = b"activedaemon/user-key/v2"
STRETCH_DOMAIN = b"activedaemon/master/v2"
MAC_DOMAIN = b"activedaemon/token-mac/v1"


def user_key(master: bytes, number: int) -> bytes:
    """k_n = HMAC-SHA256(master, n): the key of user n registered before per-user salts (v1)."""
    if len(master) < 16:
        raise ValueError("the master secret must be at least 16 bytes")
    return hmac.new(master, KEY_DOMAIN + number.to_bytes(8, "big"), hashlib.sha256).digest()


def stretch_master(master: bytes, epoch: bytes) -> bytes:
    """K = scrypt(master, epoch) (N = 2^15, r = 8: about 0.1 s and 32 MB, once at start): what
    an offline guess of the master costs, per guess, for whoever holds one user's key."""
    if len(master) < 16:
        raise ValueError("the master secret must be at least 16 bytes")
    return hashlib.scrypt(master, salt=STRETCH_DOMAIN + epoch, n=2**15, r=8, p=1,
                          maxmem=64 * 2**20, dklen=32)  # fmt: skip


def user_key_v2(stretched: bytes, epoch: bytes, number: int, salt: bytes) -> bytes:
    """k_n = HMAC-SHA256(K, epoch || n || salt_n): user n's MAC key (32 bytes)."""
    data = KEY_DOMAIN_V2 + epoch + number.to_bytes(8, "big") + salt
    return hmac.new(stretched, data, hashlib.sha256).digest()


def _dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


def _zigzag(n: int) -> list[tuple[int, int]]:
    cells = sorted(((i, j) for i in range(n) for j in range(n)), key=lambda c: (sum(c), c[0]))
    return cells[1:]  # without DC: the mean brightness says little and flips with exposure


_DCT = _dct_matrix(HASH_GRID)
_ZIGZAG = _zigzag(HASH_GRID)


def image_hash(images: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signs of the lowest ``bits`` DCT coefficients (zig-zag, no DC) of the 8 x 8 block means of
    the grey image -> (bits (N, bits) bool, margins (N, bits) = |coefficient|). Images (N, C, H, W)
    in [0, 1]; a coarse hash, so that the token (fine, high-frequency) and mild JPEG rarely flip it.
    """
    picked = hash_coefficients(images, bits)
    return picked > 0, picked.abs()


def hash_coefficients(images: torch.Tensor, bits: int) -> torch.Tensor:
    """The (N, bits) signed DCT coefficients whose signs are :func:`image_hash` (linear in the
    image, so differentiable: the nudge attack in benchmarks/authid_tradeoff.py uses that)."""
    if not 1 <= bits <= len(_ZIGZAG):
        raise ValueError(f"hash bits must be in 1..{len(_ZIGZAG)}, got {bits}")
    grey = images.float().mean(1, keepdim=True)
    blocks = F.adaptive_avg_pool2d(grey, HASH_GRID)[:, 0]  # (N, 8, 8)
    coef = _DCT @ blocks @ _DCT.T
    return torch.stack([coef[:, i, j] for i, j in _ZIGZAG[:bits]], dim=1)


def _bits_to_bytes(bits: torch.Tensor) -> bytes:
    value = 0
    for b in bits.tolist():
        value = (value << 1) | int(b)
    return value.to_bytes((len(bits) + 7) // 8 or 1, "big")


@dataclass(frozen=True)
class AuthIdScheme:
    """Message layout and verification. ``user_bits`` + MAC bits = 64; ``hash_bits`` = 0 turns
    image binding off."""

    user_bits: int = 20
    hash_bits: int = 0
    retry_bits: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.user_bits <= 32:
            raise ValueError(f"user_bits must be in 8..32, got {self.user_bits}")
        if not 0 <= self.hash_bits <= len(_ZIGZAG):
            raise ValueError(f"hash_bits must be in 0..{len(_ZIGZAG)}, got {self.hash_bits}")
        if not 0 <= self.retry_bits <= min(self.hash_bits, 8):
            raise ValueError("retry_bits must be in 0..min(hash_bits, 8)")

    @property
    def mac_bits(self) -> int:
        return MESSAGE_BITS - self.user_bits

    @property
    def max_users(self) -> int:
        return 2**self.user_bits - 1  # number 0 is never issued: clean images decode to it

    @property
    def forgery_probability(self) -> float:
        """Chance that one invented message passes for a registered number (per try)."""
        return 2.0 ** (self.retry_bits - self.mac_bits)

    def describe(self) -> str:
        binding = (
            f"{self.hash_bits}-bit image hash (retry {self.retry_bits})"
            if self.hash_bits
            else "no image binding"
        )
        return (
            f"{self.user_bits}-bit user numbers ({self.max_users} users), "
            f"{self.mac_bits}-bit MAC, {binding}"
        )

    # -- issuing ------------------------------------------------------------------------------
    def _mac(self, key: bytes, number: int, hash_bits: torch.Tensor | None) -> int:
        data = MAC_DOMAIN + number.to_bytes(8, "big")
        if self.hash_bits:
            data += _bits_to_bytes(hash_bits)
        digest = int.from_bytes(hmac.new(key, data, hashlib.sha256).digest(), "big")
        return digest >> (256 - self.mac_bits)

    def message(self, number: int, key: bytes, hash_bits: torch.Tensor | None = None) -> bytes:
        """The 8 message bytes for user ``number`` (and an image's hash bits when binding)."""
        if not 1 <= number <= self.max_users:
            raise ValueError(f"user number {number} is outside 1..{self.max_users}")
        if self.hash_bits and (hash_bits is None or len(hash_bits) != self.hash_bits):
            raise ValueError(f"this scheme binds to a {self.hash_bits}-bit image hash")
        value = (number << self.mac_bits) | self._mac(key, number, hash_bits)
        return value.to_bytes(8, "big")

    def messages(self, number: int, key: bytes, images: torch.Tensor) -> list[bytes]:
        """One message per image (the same one unless the scheme binds to the image)."""
        if not self.hash_bits:
            return [self.message(number, key)] * len(images)
        bits, _ = image_hash(images, self.hash_bits)
        return [self.message(number, key, row) for row in bits]

    # -- verifying ----------------------------------------------------------------------------
    def number_of(self, message: bytes) -> int:
        return int.from_bytes(message, "big") >> self.mac_bits

    def verify(
        self, message: bytes, master: bytes, image: torch.Tensor | None = None
    ) -> int | None:
        """The user number if the MAC is right under the v1 key ``HMAC(master, n)`` (for
        ``image``, (C, H, W), when binding)."""
        number = self.number_of(message)
        if number == 0:
            return None
        return number if self.verify_key(message, user_key(master, number), image) else None

    def verify_key(self, message: bytes, key: bytes, image: torch.Tensor | None = None) -> bool:
        """Whether the MAC of ``message`` is right under the claimed user's ``key``."""
        number = self.number_of(message)
        tag = int.from_bytes(message, "big") & ((1 << self.mac_bits) - 1)
        nbytes = (self.mac_bits + 7) // 8
        for candidate in self._hash_candidates(image):
            good = self._mac(key, number, candidate)
            if hmac.compare_digest(good.to_bytes(nbytes, "big"), tag.to_bytes(nbytes, "big")):
                return True
        return False

    def _hash_candidates(self, image: torch.Tensor | None):
        if not self.hash_bits:
            yield None
            return
        if image is None:
            raise ValueError("this scheme binds to the image: pass the received image")
        bits, margins = image_hash(image[None], self.hash_bits)
        bits, margins = bits[0], margins[0]
        weakest = margins.argsort()[: self.retry_bits].tolist()
        for r in range(self.retry_bits + 1):
            for flips in itertools.combinations(weakest, r):
                candidate = bits.clone()
                for i in flips:
                    candidate[i] = ~candidate[i]
                yield candidate


@dataclass(frozen=True)
class Credential:
    """What a user needs to make authenticated tokens: number, key, and the scheme's layout.

    Text form: ``ad1.<user_bits>.<hash_bits>.<number>.<key hex>`` (retry bits are the server's
    business)."""

    number: int
    key: bytes
    scheme: AuthIdScheme

    def __str__(self) -> str:
        s = self.scheme
        return f"ad1.{s.user_bits}.{s.hash_bits}.{self.number}.{self.key.hex()}"

    @classmethod
    def parse(cls, text: str) -> Credential:
        parts = text.strip().split(".")
        try:
            if len(parts) != 5 or parts[0] != "ad1":
                raise ValueError
            user_bits, hash_bits, number = int(parts[1]), int(parts[2]), int(parts[3])
            key = bytes.fromhex(parts[4])
        except ValueError:
            raise ValueError(
                "a credential looks like ad1.<user_bits>.<hash_bits>.<number>.<key hex>"
            ) from None
        if len(key) != 32:
            raise ValueError("a credential's key is 32 bytes (64 hex digits)")
        return cls(number, key, AuthIdScheme(user_bits, hash_bits))
