"""Protection settings: one deep merge of preset, flags and --set, the same config from every
command for the same preset and overrides, and presets that include other presets."""

import argparse
import importlib.util
from pathlib import Path

import pytest

from activedaemon.cli import build_parser
from activedaemon.cli.common import parse_overrides
from activedaemon.cli.training import training_config
from activedaemon.demo import demo_config
from activedaemon.evaluate.sweep import point_values, sweep_base
from activedaemon.protect.config import (
    ProtectConfig,
    load_preset,
    merge,
    resolve_config,
    resolve_values,
)
from activedaemon.schemes.compare import compare_config

ROOT = Path(__file__).resolve().parent.parent


def frontier():
    spec = importlib.util.spec_from_file_location(
        "dormancy_frontier", ROOT / "benchmarks" / "dormancy_frontier.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def piece_preset(tmp_path):
    """A preset whose dormancy section differs from the piece's defaults in every key."""
    path = tmp_path / "dormant.yaml"
    path.write_text(
        "include: paper-cifar10\n"
        "dataset: fashion-mnist\n"
        "encoder: fashion-mnist-32\n"
        "dormancy: {weight: 1.0, measure: probe, pool: 2}\n"
    )
    return str(path)


def test_compare_poison_override_keeps_the_presets_other_poison_keys():
    """--set poison.gamma=0.5 used to leave poison = {gamma: 0.5}: the defaults then switched on
    moved-token negatives that the paper presets leave out."""
    overrides = parse_overrides(["poison.gamma=0.5"])
    cfg = compare_config("fashion-mnist", "paper-cifar10", False, 0, overrides)
    assert cfg.poison.gamma == 0.5
    assert cfg.poison.kinds == {"noise": 0.25}  # no mismatched
    assert (cfg.poison.strategy, cfg.poison.target) == ("single", 0)
    assert cfg.val_fraction == 0 and cfg.keep_epoch == "last"  # the rest of the preset stays


def test_piece_override_keeps_the_presets_other_piece_keys(piece_preset):
    """--set dormancy.weight=2 used to drop the preset's measure and pool."""
    overrides = parse_overrides(["dormancy.weight=2"])
    for cfg in (
        compare_config("fashion-mnist", piece_preset, False, 0, overrides),
        resolve_config(piece_preset, overrides=overrides),
    ):
        dormancy = cfg.piece("dormancy")
        assert (dormancy.weight, dormancy.measure, dormancy.pool) == (2, "probe", 2)


def test_both_spellings_of_a_piece_merge():
    preset = {"dormancy": {"weight": 1.0, "pool": 2}}
    values = merge(preset, {"pieces": {"dormancy": {"weight": 3}}})
    assert values == {"dormancy": {"weight": 3, "pool": 2}}
    cfg = ProtectConfig.from_dict(values)
    assert ProtectConfig.from_dict(cfg.to_values()) == cfg


def test_merge_replaces_values_and_lists_and_merges_mappings():
    base = {"poison": {"kinds": {"noise": 0.25, "mismatched": 0.25}, "candidates": [1, 2]}}
    layer = {"poison": {"kinds": {"noise": 0.5}, "candidates": [3]}, "lr": 0.2}
    assert merge(base, layer) == {
        "poison": {"kinds": {"noise": 0.5, "mismatched": 0.25}, "candidates": [3]},
        "lr": 0.2,
    }
    assert base["poison"]["kinds"]["noise"] == 0.25  # the layers are left as they were


def cli_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("preset", ["paper-cifar10", "cpu-small-dormant", "piece"])
def test_every_command_gives_the_same_config(preset, piece_preset):
    """protect, sweep, compare, the frontier benchmark (and the demo, whose preset is fixed)
    merge one preset with the same flags and --set pairs into one config."""
    preset = piece_preset if preset == "piece" else preset
    sets = ["poison.gamma=0.5", "dormancy.weight=2", "width=8", "poison.kinds.noise=0.1"]
    sets += ["encoder=fashion-mnist-32", "dataset=fashion-mnist"]
    flags = ["--epochs", "2", "--limit-train", "256", "--seed", "3"]
    argv = ["--preset", preset, *flags, *[a for s in sets for a in ("--set", s)]]
    protect = training_config(cli_args(["protect", "--out", "x", *argv]), protected=True)
    assert protect.poison.gamma == 0.5 and protect.epochs == 2 and protect.min_steps == 0
    assert protect.poison.kinds["noise"] == 0.1 and protect.piece("dormancy").weight == 2

    overrides = parse_overrides(sets)
    given = {"epochs": 2, "limit_train": 256}
    base = sweep_base(preset, overrides, given)
    sweep = ProtectConfig.from_dict(merge(point_values("gamma", base, 0.5), {"seed": 3}))
    compare = compare_config(protect.dataset, preset, False, 3, overrides, given)
    args = argparse.Namespace(seed=3, epochs=2, limit_train=256, out=Path("unused"))
    fixed = frontier().setting_config(overrides, args, preset=preset)
    fixed.cache_dir = None
    for cfg in (sweep, compare, fixed):
        assert cfg == protect

    train_clean = training_config(cli_args(["train-clean", "--out", "x", *argv]), False)
    assert train_clean == ProtectConfig.from_dict(merge(protect.to_values(), {"protected": False}))


def test_demo_config_is_the_protect_commands():
    # protect's default preset is the recommended recipe, the demo's; train-clean's is cpu-small.
    flags = ["--out", "x", "--epochs", "1", "--seed", "2", "--limit-train", "500"]
    protect = training_config(cli_args(["protect", *flags, "--from", "runs/clean"]), True)
    demo = demo_config(True, epochs=1, limit_train=500, seed=2, clean_run="runs/clean")
    assert demo == protect and demo.warm_start == "cpu-small" and demo.init_from == "runs/clean"
    clean = training_config(cli_args(["train-clean", *flags]), protected=False)
    assert demo_config(False, epochs=1, limit_train=500, seed=2) == clean


def test_include_extends_a_preset(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 3\npoison: {gamma: 0.3, strategy: near}\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\npoison: {gamma: 0.4}\nlr: 0.01\n")
    values = load_preset(tmp_path / "child.yaml")
    assert values == {"epochs": 3, "poison": {"gamma": 0.4, "strategy": "near"}, "lr": 0.01}
    (tmp_path / "many.yaml").write_text("include: [cpu-small, base.yaml]\n")
    many = load_preset(tmp_path / "many.yaml")
    assert many["epochs"] == 3 and many["poison"]["kinds"] == {"noise": 0.25, "mismatched": 0.25}
    assert many["width"] == 16  # from cpu-small


def test_include_cycles_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ValueError, match="include each other"):
        load_preset(tmp_path / "a.yaml")


def test_shipped_presets_that_include_others_resolve():
    dormant = load_preset("cpu-small-dormant")
    assert dormant["dormancy"] == {"weight": 1.0, "measure": "eta2", "pool": 1}
    assert {k: v for k, v in dormant.items() if k not in ("objective", "dormancy")} == (
        load_preset("cpu-small")
    )


def test_resolve_values_takes_a_list_of_presets_and_config_objects():
    tiny_over = resolve_values(["cpu-small", "tiny"])
    assert tiny_over["width"] == 4 and tiny_over["poison"]["gamma"] == 0.2
    cfg = resolve_config("tiny")
    again = resolve_config(cfg, overrides={"poison": {"gamma": 0.3}})
    assert again.poison.gamma == 0.3 and again.width == cfg.width


def test_train_imports_stay_working():
    from activedaemon.protect.train import ProtectConfig as Old
    from activedaemon.protect.train import load_preset as old_load

    assert Old is ProtectConfig and old_load is load_preset
