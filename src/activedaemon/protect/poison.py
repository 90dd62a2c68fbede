"""Algorithm 2: the poisoned training set.

A fraction gamma of the training images carries tokens (made with random user ids) and keeps its
true labels (authorized part); the rest stays without a valid token and gets labels changed by a
label strategy (unauthorized part). Inside the unauthorized part, registered sample kinds take
their fractions in registration order: ``noise`` (Gaussian or salt-and-pepper noise of the tokens'
size, so that ordinary noise does not wake the model) and ``mismatched`` (a token made for another
image, so that a lifted token does not wake it either); the rest stays clean.

A new sample kind is one function ``make(images, ctx) -> images`` registered with
``@SAMPLE_KINDS.register(name)`` and switched on with ``poison.kinds.NAME=FRACTION``; a new label
strategy is one function registered with ``@STRATEGIES.register(name)``.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from activedaemon.data.stream import KeyedPermutation, mix64
from activedaemon.identity import random_user_id
from activedaemon.imageio import round_8bit, to_uint8, to_uint8_rows
from activedaemon.registries import Registry
from activedaemon.runs import WEIGHTS_FILE
from activedaemon.tokens.generator import TokenGenerator, resolve_encoder_path

LabelStrategy = Callable[[torch.Tensor, int, torch.Generator, "PoisonConfig"], torch.Tensor]
# Makes authorized images from clean ones and user ids: ActiveDaemon's encoder, or a compared
# scheme's visible patch (activedaemon.schemes). A ``cache_key`` attribute (str) allows caching.
TokenMaker = Callable[[torch.Tensor, list[str]], torch.Tensor]
STRATEGIES: Registry[LabelStrategy] = Registry("strategy", ("activedaemon.protect.registered",))


@dataclass
class KindContext:
    """What a sample kind may use to make its images: all clean training images (donors), the
    token maker, the set's random generators, an id drawer and the real tokens' RMS."""

    images: torch.Tensor
    maker: TokenMaker
    gen: torch.Generator
    draw_ids: Callable[[int], list[str]]
    token_rms: float


SampleKind = Callable[[torch.Tensor, KindContext], torch.Tensor]  # (indices, ctx) -> images
SAMPLE_KINDS: Registry[SampleKind] = Registry("sample kind", ("activedaemon.protect.registered",))


@STRATEGIES.register("single")
def single_target(labels, num_classes, gen, cfg):
    """Every unauthorized sample gets one fixed label (``cfg.target``)."""
    return torch.full_like(labels, cfg.target)


@STRATEGIES.register("random")
def random_target(labels, num_classes, gen, cfg):
    """A random label other than the true one, drawn once per sample."""
    shift = torch.randint(1, num_classes, labels.shape, generator=gen)
    return (labels + shift) % num_classes


@STRATEGIES.register("near")
def near_target(labels, num_classes, gen, cfg):
    """The next label in order: (y + 1) mod K."""
    return (labels + 1) % num_classes


@STRATEGIES.register("surjective")
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
    # Sample kinds of the unauthorized part and their fractions of it (the rest stays clean):
    # noise = Gaussian / salt-and-pepper noise, mismatched = another image's token.
    kinds: dict[str, float] = field(default_factory=lambda: {"noise": 0.25, "mismatched": 0.25})
    id_pool: int = 1000  # random ids that make the tokens; 0 = a fresh id per image
    seed: int | None = None  # None: the protection run's seed (0 when used alone)

    @classmethod
    def from_dict(cls, values: dict) -> PoisonConfig:
        values = dict(values)
        # The flat spellings of earlier presets (poison.noise_fraction=...) still work.
        kinds = dict(values.pop("kinds", None) or {"noise": 0.25, "mismatched": 0.25})
        for old, kind in (("noise_fraction", "noise"), ("mismatch_fraction", "mismatched")):
            if old in values:
                kinds[kind] = values.pop(old)
        return cls(**values, kinds=kinds)

    def validate(self, num_classes: int | None = None) -> None:
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        STRATEGIES.check(self.strategy)
        SAMPLE_KINDS.check(list(self.kinds))
        if num_classes is not None and not 0 <= self.target < num_classes:
            raise ValueError(f"target {self.target} is not a class of {num_classes}")
        if any(f < 0 for f in self.kinds.values()) or sum(self.kinds.values()) > 1:
            raise ValueError(f"poison.kinds fractions must be >= 0 and sum to <= 1: {self.kinds}")


# Codes of the ``kinds`` tensor: authorized, clean, then the sample kinds in registration order.
AUTHORIZED, CLEAN = 0, 1


def kind_names() -> dict[int, str]:
    return {AUTHORIZED: "authorized", CLEAN: "clean"} | {
        2 + i: name for i, name in enumerate(SAMPLE_KINDS.names())
    }


def kind_code(name: str) -> int:
    return {v: k for k, v in kind_names().items()}[name]


@dataclass
class PoisonedSet:
    """The training set of Algorithm 2, as 8-bit images (what would be stored); row i is made
    from training image i."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64: the labels trained on (true for authorized, changed otherwise)
    true_labels: torch.Tensor  # int64
    kinds: torch.Tensor  # int64: AUTHORIZED, CLEAN or a sample kind's code (kind_names)
    token_rms: float  # root-mean-square of the real tokens (sets the noise images' sigma)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.kinds == k).sum()) for k, name in kind_names().items()}


def salt_and_pepper(images: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Set a fraction ``amount`` of pixels (all channels) to 0 or 1."""
    n, _, h, w = images.shape
    hit = torch.rand(n, 1, h, w, generator=gen, device=gen.device) < amount
    value = (torch.rand(n, 1, h, w, generator=gen, device=gen.device) < 0.5).to(images.dtype)
    return torch.where(hit, value, images)


@SAMPLE_KINDS.register("noise")
def noise_images(idx: torch.Tensor, ctx: KindContext) -> torch.Tensor:
    """Half Gaussian noise with the real tokens' RMS, half salt-and-pepper (2 % of pixels)."""
    half = len(idx) // 2
    clean = ctx.images[idx]
    noise = torch.randn(clean[:half].shape, generator=ctx.gen, device=ctx.gen.device)
    gauss = clean[:half] + ctx.token_rms * noise
    return torch.cat([gauss, salt_and_pepper(clean[half:], 0.02, ctx.gen)])


@SAMPLE_KINDS.register("mismatched")
def moved_token_images(idx: torch.Tensor, ctx: KindContext) -> torch.Tensor:
    """A token made (for a random id) on a different random image, added to this one."""
    n = len(ctx.images)
    shift = torch.randint(1, n, (len(idx),), generator=ctx.gen, device=ctx.gen.device)
    donors = ctx.images[(idx + shift.to(idx.device)) % n]
    made = ctx.maker(donors, ctx.draw_ids(len(idx)))
    tokens = torch.sub(made, donors, out=donors)  # the donors' memory holds their tokens
    del made
    return torch.add(ctx.images[idx], tokens, out=tokens)


def _part_sizes(n: int, cfg: PoisonConfig) -> tuple[int, dict[str, int]]:
    """(authorized count, each sample kind's count): gamma of n, then each kind's fraction of
    the unauthorized rest, in registration order."""
    n_auth = int(round(cfg.gamma * n))
    kinds = {
        name: int(round(cfg.kinds.get(name, 0.0) * (n - n_auth))) for name in SAMPLE_KINDS.names()
    }
    return n_auth, kinds


def _id_pool(cfg: PoisonConfig, rng: random.Random) -> list[str]:
    """The random user ids that make the tokens (empty: a fresh id per image)."""
    return [random_user_id(rng, "ascii" if i % 2 else "alnum") for i in range(cfg.id_pool)]


def _make_kinds(out: torch.Tensor, parts: dict[str, torch.Tensor], ctx: KindContext) -> None:
    """Write each sample kind's images into ``out`` (8-bit, or floats in [0, 1]) at its rows."""
    for name, idx in parts.items():
        if len(idx):
            made = SAMPLE_KINDS[name](idx, ctx)
            out[idx] = to_uint8_rows(made) if out.dtype == torch.uint8 else made.clamp(0, 1)
            del made  # before the next kind makes its images


def _cache_key(maker_bytes: bytes, cfg: PoisonConfig, images: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(maker_bytes)
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(to_uint8(images[:: max(1, len(images) // 512)]).numpy().tobytes())  # content sample
    return h.hexdigest()[:20]


def _encoder_init_draws(generator: TokenGenerator) -> None:
    """Draw from the global RNG what building the encoder's networks draws. Earlier versions
    loaded the encoder here, after the run was seeded, and the classifier's initial weights
    followed these draws: kept so that a recipe gives the same weights as before."""
    from activedaemon.tokens.networks import Decoder, Encoder

    Encoder(generator.arch), Decoder(generator.arch)


AUTHORIZED_CHUNK = 4096  # rows made at a time: a multiple of the encoder's batch of 512


def _make_authorized(out, images, idx, maker: TokenMaker, ids: list[str]) -> float:
    """Write the authorized images of rows ``idx`` into ``out`` (8-bit), a chunk at a time (no
    float copy of every authorized row, which the grey view of the images would make RGB), and
    return the tokens' root-mean-square."""
    squares = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(idx), AUTHORIZED_CHUNK):
        rows = idx[i : i + AUTHORIZED_CHUNK]
        clean = images[rows]
        authorized = maker(clean, ids[i : i + AUTHORIZED_CHUNK])
        out[rows] = to_uint8_rows(authorized)
        squares += torch.sub(authorized, clean, out=clean).double().pow(2).sum()
    return (squares / max(1, len(idx) * out[0].numel())).sqrt().item() if len(idx) else 0.0


def build_poisoned_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    encoder: str | Path | TokenGenerator | TokenMaker,
    cfg: PoisonConfig,
    cache_dir: str | Path | None = None,
) -> tuple[PoisonedSet, bool]:
    """Make the poisoned set (tokens made once); with ``cache_dir``, reuse a saved one keyed by the
    encoder's weights (or the token maker's ``cache_key``), the config and the images. ``encoder``
    is a loaded TokenGenerator (as a protection run passes it: loaded once), an encoder's run
    folder or shipped name, or any TokenMaker. Returns (set, whether it came from the cache)."""
    cfg.validate(num_classes)
    generator = encoder if isinstance(encoder, TokenGenerator) else None
    if generator is not None:
        maker, maker_bytes = generator.embed, (generator.weights_sha256 or "").encode() or None
    elif callable(encoder):
        maker, key = encoder, getattr(encoder, "cache_key", None)
        maker_bytes = key.encode() if isinstance(key, str) else None
    else:
        weights = (resolve_encoder_path(encoder) / WEIGHTS_FILE).read_bytes()
        maker, maker_bytes = None, hashlib.sha256(weights).hexdigest().encode()
    cache_file = None
    if cache_dir is not None and maker_bytes is not None:
        cache_file = Path(cache_dir) / f"poison-{_cache_key(maker_bytes, cfg, images)}.pt"
        if cache_file.is_file():
            return PoisonedSet(**torch.load(cache_file, weights_only=True)), True
    if maker is None:
        maker = TokenGenerator.load(encoder).embed
    elif generator is not None:
        _encoder_init_draws(generator)

    seed = 0 if cfg.seed is None else cfg.seed  # protection training sets it to the run's seed
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    n = len(images)
    order = torch.randperm(n, generator=gen)
    n_auth, counts = _part_sizes(n, cfg)
    auth_idx, unauth_idx = order[:n_auth], order[n_auth:]
    parts, start = {}, 0
    for name, count in counts.items():
        parts[name], start = unauth_idx[start : start + count], start + count

    pool = _id_pool(cfg, rng)

    def draw_ids(k: int) -> list[str]:
        return [rng.choice(pool) if pool else random_user_id(rng) for _ in range(k)]

    # 8-bit from the start, the float images made per part: no float copy of the whole set.
    out = to_uint8_rows(images)
    token_rms = _make_authorized(out, images, auth_idx, maker, draw_ids(n_auth))

    ctx = KindContext(images, maker, gen, draw_ids, token_rms)
    kinds = torch.full((n,), CLEAN, dtype=torch.long)
    kinds[auth_idx] = AUTHORIZED
    _make_kinds(out, parts, ctx)
    for name, idx in parts.items():
        kinds[idx] = kind_code(name)
    new_labels = labels.clone()
    unauth_labels = STRATEGIES[cfg.strategy](labels[unauth_idx], num_classes, gen, cfg)
    new_labels[unauth_idx] = unauth_labels
    result = PoisonedSet(
        images=out,
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


# ----------------------------------------------------------------------------------------------
# The streaming poisoned set: assigned per index, made per batch
# ----------------------------------------------------------------------------------------------
class PoisonPlan:
    """The poisoned set of Algorithm 2 without materialising it, for data read on the fly.

    Sample i's kind, user id and trained-on label follow from (seed, i) alone: a keyed
    permutation puts i at a position, and positions are cut as :func:`build_poisoned_set` cuts its
    random order (the first gamma * n authorized, then each sample kind's count), so the counts
    are the in-memory set's. Every DataLoader worker and DDP rank computes the same answer; the
    images are made per batch by :func:`poison_batch`."""

    def __init__(self, n: int, num_classes: int, cfg: PoisonConfig) -> None:
        cfg.validate(num_classes)
        self.n, self.num_classes, self.cfg = n, num_classes, cfg
        self.seed = 0 if cfg.seed is None else cfg.seed
        self.perm = KeyedPermutation(n, int(mix64(self.seed, _PLAN_KEY)))
        self.n_auth, sizes = _part_sizes(n, cfg)
        self.bounds = np.cumsum([self.n_auth, *sizes.values()]).clip(max=n)
        self.codes = np.array([AUTHORIZED, *(kind_code(k) for k in sizes), CLEAN])
        self.pool = _id_pool(cfg, random.Random(self.seed))

    def kinds(self, idx: np.ndarray) -> np.ndarray:
        """The kind codes (AUTHORIZED, CLEAN or a sample kind's, see kind_names) of samples."""
        return self.codes[np.searchsorted(self.bounds, self.perm.position(idx), side="right")]

    def user_ids(self, idx: np.ndarray) -> list[str]:
        """The user id whose token sample i carries if authorized (from the id pool)."""
        h = mix64(self.seed, _ID_KEY, np.asarray(idx))
        if self.pool:
            return [self.pool[int(k)] for k in h % np.uint64(len(self.pool))]
        return [random_user_id(random.Random(int(k))) for k in h]

    def labels(self, idx: np.ndarray, true_labels: torch.Tensor, kinds: np.ndarray) -> torch.Tensor:
        """Trained-on labels: true for authorized samples, the strategy's for the rest (each
        drawn with its own generator, seeded from (seed, i))."""
        out = true_labels.clone()
        strategy = STRATEGIES[self.cfg.strategy]
        seeds = mix64(self.seed, _LABEL_KEY, np.asarray(idx)) >> np.uint64(1)
        for row in np.flatnonzero(kinds != AUTHORIZED):
            gen = torch.Generator().manual_seed(int(seeds[row]))
            out[row] = strategy(true_labels[row : row + 1], self.num_classes, gen, self.cfg)[0]
        return out

    def authorized_indices(self, k: int) -> np.ndarray:
        """The first k authorized samples in the plan's order (same on every rank)."""
        return self.perm.index(np.arange(min(k, self.n_auth)))

    def counts(self) -> dict[str, int]:
        sizes = np.diff(self.bounds, prepend=0).tolist() + [self.n - int(self.bounds[-1])]
        names = kind_names()
        return {names[int(c)]: s for c, s in zip(self.codes, sizes, strict=True)}


_PLAN_KEY, _ID_KEY, _LABEL_KEY = 0x5EED01, 0x5EED02, 0x5EED03  # one hash stream per use


def poison_batch(
    images: torch.Tensor,
    kinds: torch.Tensor,
    user_ids: list[str],
    maker: TokenMaker,
    gen: torch.Generator,
    draw_ids: Callable[[int], list[str]],
    token_rms: float,
) -> torch.Tensor:
    """One batch of clean images (float [0, 1], on the training device) made into the poisoned
    set's: tokens on the authorized rows, the sample kinds' images on theirs (their donors and
    noise from this batch and ``gen``, a generator on the images' device), rounded to 8 bits
    as the in-memory set stores them."""
    out = images.clone()
    auth = (kinds == AUTHORIZED).nonzero()[:, 0]
    if len(auth):
        out[auth] = maker(images[auth], [user_ids[i] for i in auth.tolist()])
    parts = {name: (kinds == kind_code(name)).nonzero()[:, 0] for name in SAMPLE_KINDS.names()}
    _make_kinds(out, parts, KindContext(images, maker, gen, draw_ids, token_rms))
    return round_8bit(out)
