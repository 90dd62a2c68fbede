"""One file is a new attack, scheme, classifier or data set: the worked examples of CONTRIBUTING.md
(examples/plugins/) are loaded by name through $ACTIVEDAEMON_PLUGINS, in a fresh process so that
the suite's registries stay as shipped, and each one is used the way its users would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from activedaemon.registries import Registry, import_submodules

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "plugins"
PLUGINS = "contrast_attack,border_scheme,tiny_cnn,npz_dataset"

SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
import torch
from activedaemon.attacks import ATTACKS, run_attack
from activedaemon.attacks.suite import load_context
from activedaemon.data import list_datasets, load_dataset
from activedaemon.protect import ProtectConfig, build_classifier, load_classifier, train_classifier
from activedaemon.protect.models import stage_names
from activedaemon.schemes import create_scheme, list_schemes

run, encoder, tmp = sys.argv[1], sys.argv[2], Path(sys.argv[3])
out = {"attacks": ATTACKS.names(), "schemes": list_schemes(), "datasets": list_datasets()}
ctx = load_context(run, encoder, limit_test=100, fast=True)
result = run_attack("contrast", ctx)
out["contrast"] = {"verdict": result.verdict, "x": result.curve["x_values"]}

tiny = {"limit_train": 300, "limit_test": 50, "width": 4, "epochs": 1, "batch_size": 64}
border = create_scheme("border")
x = torch.rand(2, 3, 32, 32)
marked = border.authorize(x)
out["border_edge"] = marked[..., 0, :].unique().tolist()  # 8-bit grey: 128 / 255
inside, clean = marked[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1]
out["border_inside_same"] = bool(torch.allclose(inside, clean, atol=1 / 255))
border.train(ProtectConfig.from_dict(tiny), tmp / "border")
out["border_trained"] = border.model is not None

net = build_classifier("tiny-cnn", 10, 3, 8)
out["tiny_cnn_logits"] = list(net(torch.rand(2, 3, 32, 32)).shape)
out["tiny_cnn_stages"] = stage_names(net)
cnn = train_classifier(
    ProtectConfig.from_dict({**tiny, "arch": "tiny-cnn", "encoder": encoder}), tmp / "cnn"
)
out["tiny_cnn_card"] = load_classifier(cnn).card["arch"]

folder = tmp / "data" / "npz-demo"
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for split, n in (("train", 40), ("test", 20)):
    np.savez(folder / f"{split}.npz", images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
             labels=np.arange(n) % 4)
data = load_dataset("npz-demo", tmp / "data", size=32, channels=3)
out["npz"] = [list(data.train.images.shape), len(data.test), data.num_classes]
print(json.dumps(out))
"""


def test_registry_refuses_duplicates_and_suggests_close_names():
    reg = Registry("widget")
    reg.register("round")(object)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("round", object)
    with pytest.raises(ValueError, match=r"unknown widget 'rund' \(did you mean round\?\)"):
        reg["rund"]
    with pytest.raises(ValueError, match="'a'.*'b'"):
        reg.check(["round", "a", "b"])
    assert reg.names() == ["round"] and "round" in reg


def test_a_module_dropped_into_a_package_registers_itself(tmp_path, monkeypatch):
    pkg = tmp_path / "dropins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text(
        "from activedaemon.registries import Registry\nTHINGS = Registry('thing')\n"
    )
    (pkg / "extra.py").write_text(
        "from dropins.registry import THINGS\nTHINGS.register('extra', 42)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import_submodules("dropins")
    from dropins.registry import THINGS

    assert THINGS["extra"] == 42


def test_worked_examples_are_one_file_each(toy_runs, tiny_encoder, tmp_path):
    env = {
        **os.environ,
        "ACTIVEDAEMON_PLUGINS": PLUGINS,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    args = [str(toy_runs[0]), str(tiny_encoder[1]), str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "contrast" in out["attacks"] and out["contrast"]["verdict"] in ("holds", "broken")
    assert out["contrast"]["x"] == [0.5, 1.5]
    assert "border" in out["schemes"] and out["border_trained"]
    assert out["border_edge"] == [pytest.approx(128 / 255)] and out["border_inside_same"]
    assert out["tiny_cnn_logits"] == [2, 10]
    assert out["tiny_cnn_stages"] == ["net.layer1", "net.layer2", "net.layer3"]
    assert out["tiny_cnn_card"] == "tiny-cnn"
    assert "npz-demo" in out["datasets"] and out["npz"] == [[40, 3, 32, 32], 20, 4]
    listed = subprocess.run(
        [sys.executable, "-m", "activedaemon.cli", "attack", "list"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0 and "contrast" in listed.stdout, listed.stderr[-2000:]


def test_contributing_shows_the_tested_examples():
    doc = (EXAMPLES.parent.parent / "CONTRIBUTING.md").read_text()
    for name in PLUGINS.split(","):
        assert "```python\n" + (EXAMPLES / f"{name}.py").read_text() + "```" in doc, name


def fake_distribution(site: Path, name: str, entry_points: str) -> None:
    """An installed distribution as importlib.metadata finds one on sys.path: its dist-info
    folder with metadata and entry points (what `pip install` of a plugin package leaves)."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[activedaemon.plugins]\n{entry_points}\n")


def run_python(code: str, site: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEDAEMON_PLUGINS"}
    paths = [str(site), str(EXAMPLES), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_an_installed_packages_entry_point_registers_its_plugin(tmp_path):
    """A package that declares ``[project.entry-points."activedaemon.plugins"]`` is found without
    the environment variable: its classifier and attack are in the registries."""
    fake_distribution(tmp_path, "activedaemon-extras", "cnn = tiny_cnn\ncontrast = contrast_attack")
    code = (
        "from activedaemon.protect.models import CLASSIFIERS\n"
        "from activedaemon.attacks import ATTACKS\n"
        "print('tiny-cnn' in CLASSIFIERS.names(), 'contrast' in ATTACKS.names())\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"]


def test_a_broken_entry_point_names_its_plugin(tmp_path):
    fake_distribution(tmp_path, "activedaemon-broken", "oops = no_such_module_here")
    code = "from activedaemon.attacks import ATTACKS\nATTACKS.names()\n"
    done = run_python(code, tmp_path)
    assert done.returncode != 0
    assert "plugin 'oops'" in done.stderr and "activedaemon-broken" in done.stderr
