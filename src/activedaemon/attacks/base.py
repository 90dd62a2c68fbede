"""One interface for every attack: a registry, one verb (``run_attack``), one result type.

An attack is a function ``fn(ctx: AttackContext, **params) -> AttackResult`` registered with
``@register_attack(name, needs={...})``. ``needs`` names what it uses beyond the model and the
authorized / clean test images (keys of ``NEEDS``); a context that lacks one (a compared scheme
without ActiveDaemon's encoder, a key in the weights) makes the attack not applicable, with the
reason. Its docstring says what it does; the paragraph that starts with "Threat model:" says
what the attacker has, and goes into the result and the report. Every attack has a fast mode
(``ctx.fast``) with smaller defaults, used by the tests.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from activedaemon.data.datasets import ImageDataset
from activedaemon.identity import random_user_id
from activedaemon.imageio import round_8bit
from activedaemon.metrics import accuracy
from activedaemon.protect.adversarial import token_budget
from activedaemon.registries import Registry

log = logging.getLogger(__name__)

AttackFn = Callable[..., "AttackResult"]
ATTACKS: Registry[AttackFn] = Registry("attack", ("activedaemon.attacks",))

# What an attack may need from its context, and what lacking it means.
NEEDS = {
    "encoder": "ActiveDaemon's token encoder (user-specific tokens made on the image)",
    "decoder": "ActiveDaemon's token decoder (reads the user id back)",
    "input_key": "a key carried by the input (a token or patch on the image)",
    "attacker_data": "images of the task's training split (the attacker's own data)",
}


def register_attack(name: str, needs: set[str] | frozenset[str] = frozenset()):
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"attack {name!r} needs unknown capabilities {sorted(unknown)}")

    def wrap(fn: AttackFn) -> AttackFn:
        fn.needs = frozenset(needs)
        return ATTACKS.register(name)(fn)

    return wrap


def list_attacks() -> list[str]:
    return ATTACKS.names()


def not_applicable(name: str, ctx: AttackContext) -> str | None:
    """Why attack ``name`` cannot run on ``ctx`` (what it needs and the context lacks), or None."""
    missing = sorted(ATTACKS[name].needs - ctx.capabilities)
    return "needs " + "; ".join(NEEDS[m] for m in missing) if missing else None


def threat_model(name: str) -> str:
    """The "Threat model:" paragraph of an attack's docstring."""
    doc = inspect.getdoc(ATTACKS[name]) or ""
    for para in doc.split("\n\n"):
        if para.startswith("Threat model:"):
            return " ".join(para.removeprefix("Threat model:").split())
    raise ValueError(f"attack {name!r} does not state its threat model")


@dataclass
class AttackResult:
    """What an attack measured. ``metrics`` holds the headline figures (accuracies in percent);
    ``curve`` the data behind its figure: ``{"x": name, "x_values": [...], "series": {name:
    [...]}}``; ``verdict`` is "holds", "broken" or "info" (no target) against ``target``.
    ``run_attack`` fills in ``name``, ``threat_model`` and ``seconds``."""

    metrics: dict[str, float | None]
    target: str = ""
    verdict: str = "info"
    curve: dict | None = None
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)  # rows of a detail table (same keys each)
    name: str = ""
    threat_model: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class AttackContext:
    """What attacks work on: the protected model, the token generator, the data set (its train
    split is the attacker's clean labelled data where a threat model allows it; the test split is
    for measuring), a seed and the fast flag. Authorized test images and the baseline A_ad / A_ud
    are computed once and shared by all attacks.

    Compared schemes (activedaemon.schemes) have no encoder: ``authorize`` (images, ids ->
    authorized images) replaces ``encoder.embed``, and ``unlock`` (model -> the model its key
    opens; identity for ActiveDaemon) turns any copy of the model into the one an authorized
    user queries, for schemes whose key lives in the weights. ``capabilities`` says what the
    context offers attacks (``NEEDS``): encoder and decoder where there is an encoder,
    input_key unless ``key_in`` is "weights", attacker_data where the train split has images."""

    def __init__(
        self,
        model: torch.nn.Module,
        encoder,
        data: ImageDataset,
        seed: int = 0,
        fast: bool = False,
        out: str | Path | None = None,
        progress: bool = False,
        authorize: Callable[[torch.Tensor, list[str] | str], torch.Tensor] | None = None,
        unlock: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        key_in: str = "input",
    ):
        if encoder is None and authorize is None:
            raise ValueError("an AttackContext needs an encoder or an authorize function")
        self.model = model.eval()
        self.encoder = encoder
        self.authorize = authorize or encoder.embed
        self.unlock = unlock or (lambda m: m)
        self.data = data
        self.seed = seed
        self.fast = fast
        self.out = Path(out) if out else None
        self.progress = progress
        self.memo: dict = {}  # results shared by the attacks of one run (honest alternatives)
        self.capabilities = frozenset(
            ({"encoder", "decoder"} if encoder is not None else set())
            | ({"input_key"} if key_in == "input" else set())
            | ({"attacker_data"} if len(data.train) else set())
        )

    @property
    def test_x(self) -> torch.Tensor:
        return self.data.test.images

    @property
    def test_y(self) -> torch.Tensor:
        return self.data.test.labels

    @cached_property
    def user_ids(self) -> list[str]:
        rng = random.Random(self.seed)
        return [random_user_id(rng) for _ in range(len(self.test_y))]

    @cached_property
    def authorized(self) -> torch.Tensor:
        """Test images with a random user's token each (8-bit)."""
        return self.authorize(self.test_x, self.user_ids)

    @cached_property
    def tokens(self) -> torch.Tensor:
        return self.authorized - self.test_x

    @cached_property
    def token_budget(self) -> dict[str, float]:
        """Median L-inf and L2 size of the real tokens: the budget of perturbation attacks (the
        same measure protection training gives its adversarial negatives)."""
        linf, l2 = token_budget(self.tokens)
        return {"linf": linf, "l2": l2}

    def acc(self, images: torch.Tensor, labels: torch.Tensor | None = None, model=None) -> float:
        """Accuracy (%) of ``model`` (default: the protected one) on 8-bit-rounded images."""
        labels = self.test_y if labels is None else labels
        return accuracy(model or self.model, round_8bit(images.clamp(0, 1)), labels)

    def decode_rate(
        self, images: torch.Tensor, user_ids: list[str] | str | None = None, encoder=None
    ) -> float:
        """% of ``images`` whose token decodes to its user id (default: the test users; one
        string for all images), read by ``encoder`` (default: the context's)."""
        ids = self.user_ids if user_ids is None else user_ids
        ids = [ids] * len(images) if isinstance(ids, str) else ids
        read = (encoder or self.encoder).identify(round_8bit(images.clamp(0, 1)))
        return 100 * sum(r == u for r, u in zip(read, ids, strict=True)) / max(len(ids), 1)

    @cached_property
    def baseline(self) -> dict[str, float]:
        return {
            "A_ad": self.acc(self.authorized, model=self.unlock(self.model)),
            "A_ud": self.acc(self.test_x),
        }

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)


def run_attack(name: str, ctx: AttackContext, **params) -> AttackResult:
    """Run one registered attack; fills in its threat model, time and baseline."""
    fn = ATTACKS[name]
    why = not_applicable(name, ctx)
    if why:
        raise ValueError(f"attack {name!r} does not apply here: it {why}")
    started = time.time()
    log.info("attack %s", name)
    result = fn(ctx, **params)
    result.name, result.threat_model = name, threat_model(name)
    result.seconds = round(time.time() - started, 1)
    result.params = {"fast": ctx.fast, "seed": ctx.seed, **result.params}
    result.metrics = {**ctx.baseline, **result.metrics}
    return result


def wake_verdict(best: float, ctx: AttackContext, kind: str) -> tuple[str, str]:
    """(target text, verdict) for attacks that try to wake the model: ``kind`` "chance" wants
    the accuracy within 3 points of A_ud, "half" wants it at most half of A_ad."""
    a_ad, a_ud = ctx.baseline["A_ad"], ctx.baseline["A_ud"]
    if kind == "chance":
        target, ok = f"<= A_ud + 3 = {a_ud + 3:.2f}", best <= a_ud + 3
    else:
        target, ok = f"<= A_ad / 2 = {a_ad / 2:.2f}", best <= a_ad / 2
    return target, "holds" if ok else "broken"
