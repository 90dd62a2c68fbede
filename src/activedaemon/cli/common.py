"""What the command modules share: flag helpers, --set / --attack-param parsing, the --json
writer, and the checks of names and parameters that run before any training or loading.

Nothing here imports torch (or anything heavy) at import time: `activedaemon --help` builds every
parser. The checks import the registries they need when a command runs.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_ENCODER = "fashion-mnist-32"


# -- parsers ------------------------------------------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, leaving the old spellings of renamed flags out of --help."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


def add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser whose help hides old flag spellings."""
    return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def add_flag(p: argparse.ArgumentParser, *flags: str, aliases: tuple[str, ...] = (), **kwargs):
    """``p.add_argument(*flags, **kwargs)`` that also accepts the old spellings ``aliases``
    (left out of --help); the destination comes from the first flag."""
    action = p.add_argument(*flags, *aliases, **kwargs)
    action.hidden_aliases = tuple(aliases)
    return action


def _number(cast, test, wanted: str):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = wanted  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
positive_float = _number(float, lambda v: v > 0, "a positive number")
fraction = _number(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")


def preset_names(folder: Path = CONFIG_DIR) -> list[str]:
    """The presets shipped in activedaemon/configs (protection) or configs/encoders (a glob:
    no imports)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def add_preset(p: argparse.ArgumentParser, default: str = "cpu-small") -> None:
    p.add_argument(
        "--preset",
        default=default,
        help=f"a preset of activedaemon/configs ({', '.join(preset_names())}) or a YAML file "
        f"(default {default})",
    )


def add_out(p: argparse.ArgumentParser, help: str, required: bool = False, default=None) -> None:
    p.add_argument("--out", required=required, default=default, help=help)


def add_seed(p: argparse.ArgumentParser, default: int | None = 0, help: str | None = None):
    help = help or (f"random seed (default {default})" if default is not None else "random seed")
    p.add_argument("--seed", type=int, default=default, help=help)


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress output") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help)


def add_set(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_attack_param(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--attack-param", action="append", default=[], metavar="ATTACK.KEY=VALUE", help=help
    )


def add_json(p: argparse.ArgumentParser, what: str = "the results") -> None:
    p.add_argument(
        "--json",
        metavar="PATH",
        help=f"also write {what} as JSON to PATH ('-': print only the JSON, on stdout)",
    )


def add_encoder(p: argparse.ArgumentParser, required: bool = False, default=None) -> None:
    shown = f" (default {default})" if default else ""
    p.add_argument(
        "--encoder",
        required=required,
        default=default,
        help=f"encoder run folder or shipped name{shown}",
    )


def add_model_encoder(p: argparse.ArgumentParser) -> None:
    """--encoder (default: the one the model's card names) and --force-encoder."""
    p.add_argument(
        "--encoder",
        help="encoder run folder or shipped name (default: the encoder on the model's card)",
    )
    p.add_argument(
        "--force-encoder",
        action="store_true",
        help="use --encoder although the model was protected with another one (its numbers "
        "will not be the model's)",
    )


def add_stream_flags(p: argparse.ArgumentParser, detail: str = "") -> None:
    p.add_argument(
        "--stream",
        action="store_true",
        default=None,
        help="read the training data on the fly (worker processes decode each batch)"
        f"{detail}: memory stays flat for data sets larger than memory",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="data loader processes with --stream (default 2)"
    )


def add_data_flags(
    p: argparse.ArgumentParser,
    *,
    dataset: str | None = "data set name or imagefolder:PATH (see `activedaemon datasets`)",
    dataset_default: str | None = None,
    data_root: bool = True,
    limit_train: bool = False,
    limit_test: bool = False,
    limit_test_default: int | None = None,
    limit_test_aliases: tuple[str, ...] = (),
) -> None:
    """The data flags a command takes: --dataset (help text ``dataset``; None: no flag),
    --data-root, --limit-train N, --limit-test N (old spellings ``limit_test_aliases``)."""
    if dataset is not None:
        p.add_argument("--dataset", default=dataset_default, help=dataset)
    if data_root:
        p.add_argument(
            "--data-root",
            help="folder of data sets in torchvision's layout (default: $ACTIVEDAEMON_DATA or "
            "./data)",
        )
    if limit_train:
        p.add_argument(
            "--limit-train", type=positive_int, metavar="N", help="use only the first N training "
            "images"
        )  # fmt: skip
    if limit_test:
        shown = f" (default {limit_test_default})" if limit_test_default else ""
        add_flag(
            p,
            "--limit-test",
            aliases=limit_test_aliases,
            type=positive_int,
            default=limit_test_default,
            metavar="N",
            help=f"use only the first N test images{shown}",
        )


# -- values -------------------------------------------------------------------------------------
def given_flags(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The flags among ``names`` that the user gave (absent or None ones leave presets alone)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict:
    """KEY=VALUE pairs (VALUE read as YAML; a dotted KEY sets a nested option) -> dict."""
    import yaml

    values: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        *parents, leaf = key.strip().split(".")  # noise.gaussian_sigma=0.01 sets a nested option
        target = values
        for parent in parents:
            node = target.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ValueError(f"{flag} {pair!r}: {parent!r} is already set to a value")
            target = node
        try:
            target[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"{flag} {pair!r}: the value is not valid YAML ({e})") from None
    return values


def parse_attack_params(pairs: list[str]) -> dict[str, dict]:
    """ATTACK.KEY=VALUE pairs -> {attack: {key: value}}; lists become the tuples attacks take.
    Unknown attacks and parameters the attack does not take are errors."""
    import inspect

    from activedaemon.attacks import ATTACKS

    params: dict[str, dict] = {}
    for attack, values in parse_overrides(pairs, "--attack-param").items():
        if not isinstance(values, dict):
            raise ValueError(f"--attack-param expects ATTACK.KEY=VALUE, got {attack}=...")
        ATTACKS.check(attack)
        signature = inspect.signature(ATTACKS[attack])
        takes = [n for n in list(signature.parameters)[1:]]  # the first is the context
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            bad = [k for k in values if k not in takes]
            if bad:
                raise ValueError(
                    f"attack {attack!r} has no parameter {', '.join(map(repr, bad))}; "
                    f"its parameters: {', '.join(takes) or 'none'}"
                )
        params[attack] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return params


def split_names(text: str | None) -> list[str]:
    """'a,b,,c' -> ['a', 'b', 'c']."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


# -- output -------------------------------------------------------------------------------------
def json_only(args: argparse.Namespace) -> bool:
    """``--json -``: the JSON replaces the printed report on stdout."""
    return getattr(args, "json", None) == "-"


def emit_json(path: str | None, data) -> None:
    """Write ``data`` as JSON to ``path`` ('-': stdout; None: nowhere)."""
    if path is None:
        return
    if path == "-":
        print(json.dumps(data, indent=2, default=str))
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")  # atomic, like activedaemon.runs.write_json
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(target)
    print(f"written to {target}")


def check_json_path(path: str | None, inputs: list[str]) -> None:
    """Refuse a --json PATH that is one of the command's input files (``--json a.png b.png``
    would otherwise overwrite a.png)."""
    if path in (None, "-"):
        return
    if any(Path(path).resolve() == Path(i).resolve() for i in inputs):
        raise ValueError(f"--json {path} would overwrite an input file; give a .json path")


# -- checks of names and parameters (before any training or loading) ----------------------------
def check_names(kind: str, names: list[str], known: list[str], extra: tuple[str, ...] = ()):
    """Raise ValueError naming the unknown ``names`` and listing the valid ones."""
    unknown = [n for n in names if n not in known and n not in extra]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown)
        raise ValueError(
            f"unknown {kind}{'s' if len(unknown) > 1 else ''} {shown}; "
            f"choose from: {', '.join([*known, *extra])}"
        )


def check_dataset(name: str | None) -> None:
    from activedaemon.data import DATASETS
    from activedaemon.data.datasets import IMAGE_FOLDER_PREFIX

    if name is None or name.startswith(IMAGE_FOLDER_PREFIX) or name in DATASETS:
        return
    raise ValueError(f"{DATASETS.unknown_message(name)}, or {IMAGE_FOLDER_PREFIX}PATH")


def check_encoder(name: str | None) -> None:
    """A missing encoder is a FileNotFoundError naming the shipped ones (exit 2)."""
    if name is None:
        return
    from activedaemon.tokens.generator import resolve_encoder_path

    resolve_encoder_path(name)


def check_user_id(user_id: str | None, flag: str = "--user") -> None:
    if user_id is None:
        return
    from activedaemon.identity import validate_user_id

    try:
        validate_user_id(user_id)
    except ValueError as e:
        raise ValueError(f"{flag} {user_id!r}: {e}") from None


def protect_config(
    preset,
    flags: dict | None = None,
    overrides: list[str] | dict | None = None,
    fixed: dict | None = None,
):
    """The ProtectConfig of a command (protect.config.resolve_config: preset, then flags, then
    ``--set`` pairs or values, then ``fixed``; every name and value checked) and, for a protected
    model, that its encoder exists."""
    from activedaemon.protect.config import resolve_config

    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    try:
        cfg = resolve_config(preset, flags=flags, overrides=overrides, fixed=fixed)
    except TypeError as e:  # an unknown key of a nested option (poison, adversarial, ...)
        raise ValueError(f"bad option: {e}") from None
    if cfg.protected:
        check_encoder(cfg.encoder)
    return cfg
