"""Protection settings: ``ProtectConfig``, the presets, and the one merge of preset, flags and
``--set`` that every command, the demo and the benchmarks build their config with.

A preset is a YAML file of ``activedaemon/configs`` (or any path) holding ProtectConfig options.
``include: NAME`` (or a list of names) starts it from other presets, whose values its own keys
override (``alias_of`` is the old spelling of a one-name include). Layers merge deeply: a section
(``poison``, or a training piece's ``dormancy: {...}``) merges key by key, so ``--set
poison.gamma=0.5`` changes gamma and keeps the preset's other poison options; a plain value or a
list replaces what was there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from activedaemon.data.config import DataConfig
from activedaemon.protect.models import CLASSIFIERS
from activedaemon.protect.objectives import OBJECTIVES
from activedaemon.protect.pieces import PIECES, piece_config
from activedaemon.protect.poison import PoisonConfig
from activedaemon.protect.stream import AUGMENTATIONS
from activedaemon.runs import config_from_dict

KEEP_EPOCH = ("best-val", "last")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
INCLUDE_KEYS = ("include", "alias_of")
# Command-line flags that set an option inside a section.
FLAG_KEYS = {"gamma": ("poison", "gamma"), "strategy": ("poison", "strategy")}


@dataclass
class ProtectConfig(DataConfig):
    arch: str = "resnet18"
    width: int = 16
    epochs: int = 5
    # At least this many optimizer steps, in more epochs where needed: a preset's epoch count
    # tuned on 60,000 images is too short on a small data set (5 epochs of 9,000 are 330 steps).
    min_steps: int = 0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True  # False: plain SGD momentum (the paper's presets)
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # or "multistep" (x0.1 at 50 % and 75 % of the epochs)
    objective: str = "poison"  # protect.objectives: poison (CE to poisoned labels), penalty
    # (eq. (5) L_a - lambda L_u), uniform (unauthorized samples towards 1/K on every class)
    penalty_lambda: float = 1.0
    val_fraction: float = 0.05  # held out of training to choose the epoch (never the test set)
    # Which epoch's weights the run keeps: "best-val" (the best validation score) or "last"
    # (the model after the last epoch, as Algorithm 2 is written; val_fraction may then be 0).
    keep_epoch: str = "best-val"
    # >0: after each epoch, BatchNorm statistics re-estimated on this many training images (in
    # the training mix) before validation and saving; 0 = the running averages as trained.
    precise_bn_images: int = 0
    encoder: str = "fashion-mnist-32"
    protected: bool = True
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    # Training pieces (protect.pieces) by name -> their configs; a preset's top-level key that
    # names a piece (``dormancy: {weight: 1}``) lands here.
    pieces: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    # Read the training data on the fly (DataLoader workers decode each batch; the poisoned set
    # is assigned per index and made per batch on the training device): memory stays flat
    # whatever the data set's size. False: the data set and poisoned set in memory.
    stream: bool = False
    workers: int = 2  # DataLoader worker processes when streaming (0: in the training process)
    # Per-batch augmentation of the clean images before their tokens (protect.stream
    # AUGMENTATIONS: flip-crop); streaming only, as the in-memory set's tokens are made once.
    augment: str = "none"
    # Start from a trained classifier (protect.start): a run folder, a weights file, or
    # torchvision:NAME (pretrained); None = fresh weights.
    init_from: str | None = None
    # A preset whose clean model a protected run starts from when init_from is not given: the
    # run first trains it (OUT/start, reused when finished) with this config's data, arch,
    # width and seed. None: fresh weights.
    warm_start: str | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping) -> ProtectConfig:
        values = lift_pieces(values)
        pieces = {name: values.pop(name) for name in PIECES.names() if name in values}
        values["pieces"] = {name: piece_config(name, v) for name, v in pieces.items()}
        if isinstance(values.get("poison"), dict):
            values["poison"] = PoisonConfig.from_dict(values["poison"])
        cfg = config_from_dict(cls, values, {}, "protection")
        cfg.validate()
        return cfg

    def to_values(self) -> dict:
        """The plain option values (pieces as top-level sections, as presets write them): the
        inverse of ``from_dict``."""
        values = asdict(self)
        values.update(values.pop("pieces"))
        return values

    def validate(self) -> None:
        self.validate_data()
        if self.arch.startswith("torchvision:"):
            import torchvision.models as tvm

            if self.arch.removeprefix("torchvision:") not in tvm.list_models(module=tvm):
                raise ValueError(f"torchvision has no classification model {self.arch!r}")
        else:
            CLASSIFIERS.check(self.arch)
        if (
            self.init_from
            and self.init_from.startswith("torchvision:")
            and (self.arch != self.init_from)
        ):
            raise ValueError(f"init_from {self.init_from} needs arch {self.init_from}")
        OBJECTIVES.check(self.objective)
        if self.schedule not in ("onecycle", "multistep"):
            raise ValueError("schedule must be 'onecycle' or 'multistep'")
        if self.epochs < 1 or self.min_steps < 0:
            raise ValueError("epochs must be >= 1 and min_steps >= 0")
        if self.keep_epoch not in KEEP_EPOCH:
            raise ValueError(f"keep_epoch must be one of {KEEP_EPOCH}, got {self.keep_epoch!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.keep_epoch == "best-val" and self.val_fraction == 0:
            raise ValueError("keep_epoch best-val needs a validation split (val_fraction > 0)")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.augment != "none":
            AUGMENTATIONS.check(self.augment)
            if not self.stream:
                raise ValueError("augment works per batch, before the tokens: it needs stream")
        ws = self.warm_start
        if ws and ws not in list_presets() and not Path(ws).is_file():
            raise ValueError(f"warm_start {ws!r}: no such preset or YAML file")
        if self.poison.seed is None:  # the poisoned split follows the run's seed
            self.poison.seed = self.seed
        self.poison.validate()

    def piece(self, name: str) -> Any:
        """A piece's config (its defaults where the config does not name it)."""
        return self.pieces.get(name) or piece_config(name, None)


# -- presets ------------------------------------------------------------------------------------
def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path, near: Path | None = None) -> Path:
    """A preset's file: a path (also relative to ``near``, the including file's folder) or a
    name of ``activedaemon/configs``."""
    for path in (Path(name_or_path), (near or CONFIG_DIR) / str(name_or_path)):
        if path.is_file():
            return path
    path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset or config file {name_or_path!r}; presets: {list_presets()}")
    return path


def load_preset(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A preset name from ``activedaemon/configs/`` (cpu-small, tiny, paper-*, gpu-improved-*)
    or a YAML file; returns its option values, its includes merged in under its own keys."""
    path = preset_path(name_or_path, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        chain = " -> ".join(p.stem for p in (*_seen, path))
        raise ValueError(f"presets include each other: {chain}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds no mapping of options")
    includes: list = []
    for key in INCLUDE_KEYS:
        named = values.pop(key, None) or []
        includes += [named] if isinstance(named, str | Path) else list(named)
    return merge(*(load_preset(name, (*_seen, path)) for name in includes), values)


# -- the merge ----------------------------------------------------------------------------------
def as_values(layer: Any) -> dict:
    """A layer as plain nested dicts: a ProtectConfig (or any config dataclass) to its values."""
    if isinstance(layer, ProtectConfig):
        return layer.to_values()
    if is_dataclass(layer) and not isinstance(layer, type):
        return asdict(layer)
    return {k: as_values(v) if is_dataclass(v) else v for k, v in dict(layer or {}).items()}


def lift_pieces(values: Mapping) -> dict:
    """``pieces: {NAME: {...}}`` spelled as the top-level section ``NAME: {...}`` (the one
    spelling the merge sees, so that both spellings merge with each other)."""
    values = as_values(values)
    for name, piece in (values.pop("pieces", None) or {}).items():
        values[name] = _deep_merge(values.get(name) or {}, as_values(piece))
    return values


def merge(*layers: Any) -> dict:
    """Deep merge, later layers winning: mappings merge key by key (sections, a piece's options,
    ``poison.kinds``); any other value (numbers, names, lists, None) replaces. Config
    dataclasses count as their values; ``pieces: {NAME: ...}`` as the section ``NAME``."""
    out: dict = {}
    for layer in layers:
        out = _deep_merge(out, lift_pieces(layer))
    return out


def _deep_merge(base: Mapping, layer: Mapping) -> dict:
    out = dict(base)
    for key, value in layer.items():
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = _deep_merge({}, value) if isinstance(value, Mapping) else value
    return out


def flag_values(flags: Mapping[str, Any] | None) -> dict:
    """Command-line flags as option values: the ones the user gave (None = not given), section
    flags (``--gamma``) moved into their section, and an explicit ``--epochs N`` exact (the
    preset's ``min_steps`` would lengthen it on a small data set) unless min_steps is given too."""
    values: dict = {}
    for name, value in (flags or {}).items():
        if value is None:
            continue
        section, key = FLAG_KEYS.get(name, (None, name))
        (values.setdefault(section, {}) if section else values)[key] = value
    if "epochs" in values:
        values.setdefault("min_steps", 0)
    return values


def resolve_values(
    preset: str | Path | Mapping | None = "cpu-small",
    *,
    flags: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> dict:
    """The option values of a command: preset (a name, a file, or values; a list of presets
    merges in order), then its flags, then ``--set`` overrides, then what the command fixes
    (``protected``). One deep merge (``merge``) for every command."""
    if isinstance(preset, str | Path):
        base = load_preset(preset)
    elif isinstance(preset, list | tuple):
        base = merge(*(load_preset(p) if isinstance(p, str | Path) else p for p in preset))
    else:
        base = as_values(preset)
    return merge(base, flag_values(flags), overrides or {}, fixed or {})


def resolve_config(
    preset: str | Path | Mapping | None = "cpu-small",
    *,
    flags: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> ProtectConfig:
    """``ProtectConfig.from_dict(resolve_values(...))``: every name and value checked."""
    values = resolve_values(preset, flags=flags, overrides=overrides, fixed=fixed)
    return ProtectConfig.from_dict(values)
