"""Protection training (Algorithm 2): label strategies, poisoned set, training, DDP, evaluation."""

import html
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from activedaemon.cli import main
from activedaemon.data import load_dataset
from activedaemon.evaluate.protection import RESULT_KEYS, evaluate_protection
from activedaemon.protect import ProtectConfig, build_classifier, load_classifier, train_classifier
from activedaemon.protect.pieces import TrainingPiece
from activedaemon.protect.poison import (
    AUTHORIZED,
    CLEAN,
    STRATEGIES,
    PoisonConfig,
    build_poisoned_set,
    kind_code,
)
from activedaemon.tokens import TokenGenerator

from .conftest import write_random_image_folder

ENCODER = "fashion-mnist-32"


@pytest.fixture(scope="module")
def small():
    return load_dataset("fashion-mnist", size=32, channels=3, limit_train=400, limit_test=200)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_label_strategies(name):
    labels = torch.arange(10).repeat(20)
    gen = torch.Generator().manual_seed(0)
    cfg = PoisonConfig(strategy=name, target=3)
    new = STRATEGIES[name](labels, 10, gen, cfg)
    assert new.shape == labels.shape and new.min() >= 0 and new.max() < 10
    if name == "single":
        assert (new == 3).all()
    elif name == "near":
        assert torch.equal(new, (labels + 1) % 10)
    elif name == "random":
        assert (new != labels).all()
        assert len(set(new.tolist())) == 10  # spread over the classes
        again = STRATEGIES[name](labels, 10, torch.Generator().manual_seed(0), cfg)
        assert torch.equal(new, again)
    elif name == "surjective":
        assert set(new.tolist()) <= {0, 2, 4, 6, 8} and (new != labels).all()
        assert len(set(new.tolist())) == 5


def test_poisoned_set_proportions_and_disjointness(small):
    x, y = small.train.images, small.train.labels
    cfg = PoisonConfig(gamma=0.25, strategy="near", kinds={"noise": 0.2, "mismatched": 0.4}, seed=0)
    ps, hit = build_poisoned_set(x, y, 10, ENCODER, cfg)
    assert not hit and len(ps) == len(y)
    counts = ps.counts()
    assert counts["authorized"] == 100
    assert counts["noise"] == 60 and counts["mismatched"] == 120 and counts["clean"] == 120
    auth = ps.kinds == AUTHORIZED
    # Each image is in exactly one part; authorized keep true labels, the rest get the strategy's.
    assert torch.equal(ps.labels[auth], y[auth])
    assert torch.equal(ps.labels[~auth], (y[~auth] + 1) % 10)
    assert torch.equal(ps.true_labels, y)
    u8 = (x * 255).round().to(torch.uint8)
    clean = ps.kinds == CLEAN
    assert torch.equal(ps.images[clean], u8[clean])
    for kind in (AUTHORIZED, kind_code("noise"), kind_code("mismatched")):
        assert (ps.images[ps.kinds == kind] != u8[ps.kinds == kind]).any()
    # Authorized images carry a readable id; noise images do not.
    gen = TokenGenerator.load(ENCODER)
    assert all(u is not None for u in gen.identify(ps.images[auth].float() / 255))
    assert all(
        u is None for u in gen.identify(ps.images[ps.kinds == kind_code("noise")].float() / 255)
    )


def test_poisoned_set_cache_hit(small, tmp_path):
    x, y = small.train.images[:100], small.train.labels[:100]
    first, hit1 = build_poisoned_set(x, y, 10, ENCODER, PoisonConfig(), cache_dir=tmp_path)
    second, hit2 = build_poisoned_set(x, y, 10, ENCODER, PoisonConfig(), cache_dir=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    _, hit3 = build_poisoned_set(x, y, 10, ENCODER, PoisonConfig(seed=1), cache_dir=tmp_path)
    assert not hit3  # another config is another key


def test_poison_config_errors(small):
    x, y = small.train.images[:10], small.train.labels[:10]
    for bad, match in [
        (PoisonConfig(gamma=1.0), "gamma"),
        (PoisonConfig(strategy="nearest"), "unknown strategy"),
        (PoisonConfig(target=10), "target"),
        (PoisonConfig(kinds={"noise": 0.7, "mismatched": 0.7}), "<= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_poisoned_set(x, y, 10, ENCODER, bad)


def test_classifier_zoo():
    model = build_classifier("resnet18", 10, in_channels=1, width=8)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert build_classifier("torchvision:resnet18", 7)(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="unknown classifier"):
        build_classifier("vgg99", 10)
    with pytest.raises(ValueError, match="torchvision has no"):
        build_classifier("torchvision:nope", 10)


def test_toy_protect_and_evaluate(toy_runs, tiny_encoder):
    protected, clean = toy_runs
    encoder = tiny_encoder[1]
    results = evaluate_protection(protected, encoder, clean, limit_test=300, per_user_images=60)
    for key in RESULT_KEYS:
        assert key in results
    # The property: on a toy task the lock already separates authorized from clean queries.
    assert results["A_ad"] > results["A_ud"] + 20, results
    # The lock holds against the paper's fake tokens: noise of the token's size and tokens moved
    # from another image (both trained as unauthorized negatives) stay near A_ud.
    assert results["A_td_gaussian"] < results["A_ud"] + 10, results
    assert results["A_td_mismatched"] < results["A_ud"] + 10, results
    assert results["A_or"] > 50
    assert len(results["per_user"]) == 18
    assert {r["alphabet"] for r in results["per_user"]} == {"ascii", "alnum"}
    run = json.loads((protected / "run.json").read_text())
    assert run["status"] == "done" and run["seed"] == 0 and "commit" in run
    assert run["metrics"]["poison_counts"]["authorized"] > 0
    model = load_classifier(protected)
    assert not model.training and model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_cli_evaluate_writes_results_json(toy_runs, tiny_encoder, tmp_path, capsys):
    protected, clean = toy_runs
    out = tmp_path / "results.json"
    # No --encoder: the card's own (the tiny encoder the toy model was protected with).
    argv = ["evaluate", "--model", str(protected), "--clean", str(clean), "--limit-test", "100"]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["encoder"] == str(tiny_encoder[1])
    record = json.loads((tmp_path / "results.run.json").read_text())
    assert record["kind"] == "evaluate" and record["status"] == "done" and record["argv"]
    numbers = [k for k in RESULT_KEYS if k != "lpips"]
    assert all(isinstance(results[k], float) for k in numbers)
    assert results["A_pd"] == pytest.approx(results["A_ad"] - results["A_ud"])
    assert results["A_od"] == pytest.approx(results["A_ad"] - results["A_or"])
    assert "A_pd" in capsys.readouterr().out


def test_an_encoder_other_than_the_cards_is_refused_unless_forced(toy_runs, tmp_path, capsys):
    protected, _ = toy_runs
    card = load_classifier(protected).card
    assert (card["kind"], card["schema"]) == ("classifier", 1)
    assert card["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert len(card["encoder_sha256"]) == 64
    argv = ["evaluate", "--model", str(protected), "--limit-test", "50", "--encoder"]
    out = ["--out", str(tmp_path / "r.json")]
    assert main([*argv, "fashion-mnist-32", *out]) == 2
    assert "was protected with encoder" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    assert main([*argv, "fashion-mnist-32", "--force-encoder", *out]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["encoder"] == "fashion-mnist-32"


def test_the_run_seed_reaches_the_poisoned_split():
    assert ProtectConfig.from_dict({"seed": 7}).poison.seed == 7
    assert ProtectConfig.from_dict({"seed": 7, "poison": {"seed": 3}}).poison.seed == 3


def test_presets_build_valid_configs(tmp_path):
    from activedaemon.protect.train import list_presets, load_preset

    assert {"cpu-small", "cpu-small-dormant", "tiny", "gpu-paper-cifar10"} <= set(list_presets())
    assert ProtectConfig.from_dict(load_preset("cpu-small-dormant")).piece("dormancy").weight == 1.0
    for name in list_presets():
        cfg = ProtectConfig.from_dict(load_preset(name))
        assert cfg.epochs >= 1
    paper = ProtectConfig.from_dict(load_preset("gpu-paper-cifar10"))
    assert (paper.width, paper.epochs, paper.batch_size, paper.schedule) == (
        64,
        120,
        256,
        "multistep",
    )
    custom = tmp_path / "mine.yaml"
    custom.write_text("epochs: 2\npoison: {strategy: near}\n")
    assert ProtectConfig.from_dict(load_preset(custom)).poison.strategy == "near"
    with pytest.raises(ValueError, match="no preset"):
        load_preset("gpu-paper-mnist")


def test_load_classifier_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a classifier run"):
        load_classifier(tmp_path)


def test_ddp_two_cpu_processes(tmp_path):
    """The same command under torchrun with 2 gloo processes trains and writes one run folder."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "activedaemon.cli", "protect", "--preset", "tiny",
           "--out", str(out), "-q"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("protected model written") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert load_classifier(out)(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_demo_quick_writes_runs_results_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "1", "--limit-train", "600",
            "--limit-test", "200", "-q"]  # fmt: skip
    assert main(argv) == 0
    for name in ("clean/weights.pt", "protected/weights.pt", "results.json", "report.html"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(results) and len(results["per_user"]) == 18
    assert results["timings"]["total_seconds"] > 0
    page = (out / "report.html").read_text()
    assert "A_pd" in page and "data:image/png;base64," in page
    # The recommended recipe, started from the demo's clean model, and the thieves' section.
    assert results["recipe"] == "cpu-recommended"
    assert results["clean_baseline"] == "trained in this run"  # not the defaults' config
    card = yaml.safe_load((out / "protected" / "card.yaml").read_text())
    assert card["from"] == str(out / "clean")
    assert "What a thief gets without a token" in page and "public" in page
    thieves = json.loads((out / "thieves.json").read_text())
    assert results["thieves"]["verdict"] == thieves["verdict"] and len(thieves["rows"]) >= 6
    assert all(row["user_id"] in html.unescape(page) for row in results["per_user"])
    assert "report:" in capsys.readouterr().out


def test_shipped_clean_baseline_is_the_demos_and_classifies(tmp_path, test_images):
    """The shipped baseline is what the demo trains at its defaults (its saved config is the
    demo's config today), is copied once, and is a working Fashion-MNIST classifier."""
    from activedaemon.demo import SHIPPED_CLEAN, demo_config, shipped_clean_baseline
    from activedaemon.runs import finished_run

    cfg = demo_config(False)
    assert finished_run(SHIPPED_CLEAN, cfg)
    source = shipped_clean_baseline(tmp_path / "clean", cfg)
    assert source.startswith("shipped (fashion-mnist-cpu-small")
    assert shipped_clean_baseline(tmp_path / "clean", cfg) is None  # already there: kept
    assert shipped_clean_baseline(tmp_path / "other", demo_config(False, epochs=1)) is None
    images, labels = test_images
    with torch.no_grad():
        accuracy = (load_classifier(tmp_path / "clean")(images).argmax(1) == labels).float().mean()
    assert accuracy > 0.85, accuracy


def test_sweep_writes_csv_and_figure(tmp_path, capsys):
    argv = ["sweep", "strategy", "--values", "single,near", "--preset", "tiny", "--limit-test",
            "64", "--out", str(tmp_path), "-q"]  # fmt: skip
    assert main(argv) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [r["strategy"] for r in rows] == ["single", "near"]
    assert all(0 <= float(r["A_ad"]) <= 100 for r in rows)
    assert (tmp_path / "sweep.png").is_file() and (tmp_path / "clean" / "weights.pt").is_file()


def test_sweep_encoder_tabulates_one_model_per_encoder(tmp_path, tiny_encoder, capsys):
    """Table IX's shape: one encoder trained on Fashion-MNIST, one on another data set (an image
    folder of random RGB images), each protecting its own tiny model on Fashion-MNIST."""
    import csv

    write_random_image_folder(tmp_path / "other", {"train": 48, "val": 16}, (40, 40), "x")
    other = tmp_path / "other-encoder"
    argv = ["train-encoder", "--preset", "tiny", "--dataset", f"imagefolder:{tmp_path / 'other'}",
            "--steps", "20", "-q", "--out", str(other)]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "sweep"
    argv = ["sweep", "encoder", "--values", f"{tiny_encoder[1]},{other}", "--preset", "tiny",
            "--limit-test", "64", "--out", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["encoder"] for r in rows] == [str(tiny_encoder[1]), str(other)]
    assert all(0 <= float(r["A_dec"]) <= 100 and float(r["psnr"]) > 0 for r in rows)
    assert (out / "encoder-2-other-encoder" / "weights.pt").is_file()
    assert "other-encoder" in capsys.readouterr().out


def test_sweep_encoder_refuses_an_encoder_of_another_size(tmp_path, capsys):
    argv = ["sweep", "encoder", "--values", "fashion-mnist-32", "--preset", "tiny",
            "--set", "image_size=28", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "works on 3x32px" in capsys.readouterr().err


def test_sweep_poison_override_keeps_the_presets_other_poison_keys():
    from activedaemon.evaluate.sweep import sweep_base

    poison = sweep_base("paper-cifar10", {"poison": {"gamma": 0.5}})["poison"]
    assert poison["gamma"] == 0.5 and poison["kinds"] == {"noise": 0.25}


@pytest.mark.parametrize("stream", [False, True])
def test_every_epoch_mixes_authorized_and_unauthorized_samples(tmp_path, stream):
    """Each half of each epoch holds authorized samples at about gamma. (Epoch 1 used to replay
    the poisoning's own permutation: every authorized sample first, then only unauthorized ones,
    and the model ended the epoch collapsed to the target label.)"""
    shares: list[float] = []

    class Recorder(TrainingPiece):
        def perturb(self, x, batch):
            shares.append((batch.kinds == AUTHORIZED).float().mean().item())
            return x

    cfg = ProtectConfig.from_dict(
        {
            "encoder": ENCODER,
            "limit_train": 1200,
            "limit_test": 64,
            "width": 8,
            "epochs": 2,
            "batch_size": 64,
            "poison": {"gamma": 0.5},
            "seed": 0,
            "stream": stream,
        }
    )
    train_classifier(cfg, tmp_path, progress=False, extra_pieces=[lambda env: Recorder(None, env)])
    per_epoch = len(shares) // 2
    for epoch in range(2):
        steps = shares[epoch * per_epoch : (epoch + 1) * per_epoch]
        for half in (steps[: per_epoch // 2], steps[per_epoch // 2 :]):
            assert abs(sum(half) / len(half) - 0.5) < 0.1, (epoch, half)
