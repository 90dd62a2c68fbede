"""Algorithm 2: the poisoned training set.

A fraction gamma of the training images carries tokens (made with random user ids) and keeps its
true labels (authorized part); the rest stays without a valid token and gets labels changed by a
strategy (unauthorized part). Inside the unauthorized part, some images get Gaussian or
salt-and-pepper noise of the tokens' size (so that ordinary noise does not wake the model) and
some get a token made for another image (so that a lifted token does not wake it either).

The two parts are disjoint: each training image appears once, authorized or not. (The authors'
code draws them independently, so one image can appear with its true label and with a changed one;
that teaches the model the token and nothing else must decide, but spends capacity on conflicting
copies and makes gamma mean something else. We keep the paper's definition of gamma.)
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from activedaemon.identity import random_user_id
from activedaemon.imageio import to_uint8
from activedaemon.tokens.generator import WEIGHTS_FILE, TokenGenerator, resolve_encoder_path

AUTHORIZED, CLEAN, NOISE, MISMATCHED = 0, 1, 2, 3
KIND_NAMES = {AUTHORIZED: "authorized", CLEAN: "clean", NOISE: "noise", MISMATCHED: "mismatched"}

LabelStrategy = Callable[[torch.Tensor, int, torch.Generator, "PoisonConfig"], torch.Tensor]
# Makes authorized images from clean ones and user ids: ActiveDaemon's encoder, or a compared
# scheme's visible patch (activedaemon.schemes). A ``cache_key`` attribute (str) allows caching.
TokenMaker = Callable[[torch.Tensor, list[str]], torch.Tensor]
STRATEGIES: dict[str, LabelStrategy] = {}


def register_strategy(name: str):
    def wrap(fn: LabelStrategy) -> LabelStrategy:
        STRATEGIES[name] = fn
        return fn

    return wrap


@register_strategy("single")
def single_target(labels, num_classes, gen, cfg):
    """Every unauthorized sample gets one fixed label (``cfg.target``)."""
    return torch.full_like(labels, cfg.target)


@register_strategy("random")
def random_target(labels, num_classes, gen, cfg):
    """A random label other than the true one, drawn once per sample."""
    shift = torch.randint(1, num_classes, labels.shape, generator=gen)
    return (labels + shift) % num_classes


@register_strategy("near")
def near_target(labels, num_classes, gen, cfg):
    """The next label in order: (y + 1) mod K."""
    return (labels + 1) % num_classes


@register_strategy("surjective")
def surjective_target(labels, num_classes, gen, cfg):
    """One of five candidate labels, in order: y -> candidates[y mod 5]; where that is y itself,
    the next candidate. Candidates default to 5 labels spread evenly over the classes."""
    cands = torch.tensor(cfg.candidates or [i * num_classes // 5 for i in range(5)])
    pick = cands[labels % len(cands)]
    return torch.where(pick == labels, cands[(labels + 1) % len(cands)], pick)


@dataclass
class PoisonConfig:
    gamma: float = 0.2  # fraction of training images that carry tokens (authorized)
    strategy: str = "single"
    target: int = 0  # the single target's label
    candidates: list[int] | None = None  # the surjective target's five labels
    noise_fraction: float = 0.25  # of the unauthorized part: Gaussian / salt-and-pepper noise
    mismatch_fraction: float = 0.25  # of the unauthorized part: another image's token
    id_pool: int = 1000  # random ids that make the tokens; 0 = a fresh id per image
    seed: int = 0

    def validate(self, num_classes: int) -> None:
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of {sorted(STRATEGIES)}"
            )
        if not 0 <= self.target < num_classes:
            raise ValueError(f"target {self.target} is not a class of {num_classes}")
        if self.noise_fraction < 0 or self.mismatch_fraction < 0:
            raise ValueError("noise_fraction and mismatch_fraction must be >= 0")
        if self.noise_fraction + self.mismatch_fraction > 1:
            raise ValueError("noise_fraction + mismatch_fraction must be <= 1")


@dataclass
class PoisonedSet:
    """The training set of Algorithm 2, as 8-bit images (what would be stored); row i is made
    from training image i."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64: the labels trained on (true for authorized, changed otherwise)
    true_labels: torch.Tensor  # int64
    kinds: torch.Tensor  # int64: AUTHORIZED / CLEAN / NOISE / MISMATCHED
    token_rms: float  # root-mean-square of the real tokens (sets the noise images' sigma)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.kinds == k).sum()) for k, name in KIND_NAMES.items()}


def salt_and_pepper(images: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Set a fraction ``amount`` of pixels (all channels) to 0 or 1."""
    n, _, h, w = images.shape
    hit = torch.rand(n, 1, h, w, generator=gen) < amount
    value = (torch.rand(n, 1, h, w, generator=gen) < 0.5).to(images.dtype)
    return torch.where(hit, value, images)


def _cache_key(maker_bytes: bytes, cfg: PoisonConfig, images: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(maker_bytes)
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(to_uint8(images[:: max(1, len(images) // 512)]).numpy().tobytes())  # content sample
    return h.hexdigest()[:20]


def build_poisoned_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    encoder: str | Path | TokenMaker,
    cfg: PoisonConfig,
    cache_dir: str | Path | None = None,
) -> tuple[PoisonedSet, bool]:
    """Make the poisoned set (tokens made once); with ``cache_dir``, reuse a saved one keyed by the
    encoder's weights (or the token maker's ``cache_key``), the config and the images. ``encoder``
    is an encoder (run folder or shipped name) or any TokenMaker. Returns (set, whether it came
    from the cache)."""
    cfg.validate(num_classes)
    if callable(encoder):
        maker, key = encoder, getattr(encoder, "cache_key", None)
        maker_bytes = key.encode() if isinstance(key, str) else None
    else:
        encoder_dir = resolve_encoder_path(encoder)
        maker_bytes = (encoder_dir / WEIGHTS_FILE).read_bytes()
        maker = None
    cache_file = None
    if cache_dir is not None and maker_bytes is not None:
        cache_file = Path(cache_dir) / f"poison-{_cache_key(maker_bytes, cfg, images)}.pt"
        if cache_file.is_file():
            return PoisonedSet(**torch.load(cache_file, weights_only=True)), True

    maker = maker or TokenGenerator.load(encoder_dir).embed
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    n = len(images)
    order = torch.randperm(n, generator=gen)
    n_auth = int(round(cfg.gamma * n))
    auth_idx, unauth_idx = order[:n_auth], order[n_auth:]
    n_unauth = len(unauth_idx)
    n_noise = int(round(cfg.noise_fraction * n_unauth))
    n_mis = int(round(cfg.mismatch_fraction * n_unauth))
    noise_idx, mis_idx = unauth_idx[:n_noise], unauth_idx[n_noise : n_noise + n_mis]

    pool = [random_user_id(rng, "ascii" if i % 2 else "alnum") for i in range(cfg.id_pool)]

    def draw_ids(k: int) -> list[str]:
        return [rng.choice(pool) if pool else random_user_id(rng) for _ in range(k)]

    out = images.clone()
    authorized = maker(images[auth_idx], draw_ids(n_auth))
    tokens = authorized - images[auth_idx]
    out[auth_idx] = authorized
    token_rms = tokens.pow(2).mean().sqrt().item() if n_auth else 0.0

    # Noise images: half Gaussian with the tokens' RMS, half salt-and-pepper.
    half = n_noise // 2
    gauss = images[noise_idx[:half]] + token_rms * torch.randn(
        images[noise_idx[:half]].shape, generator=gen
    )
    out[noise_idx[:half]] = gauss.clamp(0, 1)
    out[noise_idx[half:]] = salt_and_pepper(images[noise_idx[half:]], 0.02, gen)
    # Mismatched: a token made (for a random id) on a different random image, added to this one.
    donors = (mis_idx + torch.randint(1, n, (n_mis,), generator=gen)) % n
    donor_tokens = maker(images[donors], draw_ids(n_mis)) - images[donors]
    out[mis_idx] = (images[mis_idx] + donor_tokens).clamp(0, 1)

    kinds = torch.full((n,), CLEAN, dtype=torch.long)
    kinds[auth_idx], kinds[noise_idx], kinds[mis_idx] = AUTHORIZED, NOISE, MISMATCHED
    new_labels = labels.clone()
    unauth_labels = STRATEGIES[cfg.strategy](labels[unauth_idx], num_classes, gen, cfg)
    new_labels[unauth_idx] = unauth_labels
    result = PoisonedSet(
        images=to_uint8(out),
        labels=new_labels,
        true_labels=labels.clone(),
        kinds=kinds,
        token_rms=token_rms,
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save(asdict(result), tmp)
        tmp.replace(cache_file)
    return result, False
