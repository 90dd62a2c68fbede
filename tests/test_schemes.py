"""The compared schemes: each one's key property on real Fashion-MNIST, and `compare --fast`."""

import csv
import json

import pytest
import torch

from activedaemon.attacks import AttackContext, run_attack
from activedaemon.cli import main
from activedaemon.data import load_dataset
from activedaemon.metrics import accuracy, image_quality
from activedaemon.protect import ProtectConfig
from activedaemon.protect.models import build_classifier
from activedaemon.protect.poison import AUTHORIZED, PoisonConfig, build_poisoned_set, kind_code
from activedaemon.schemes import create_scheme, list_schemes
from activedaemon.schemes.chaow import lock, logistic_sequence, unlock
from activedaemon.schemes.passport import random_passports, set_passports, signature_match


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist", size=32, channels=3, limit_train=2000, limit_test=300)


def test_registry_has_every_scheme():
    assert {"activedaemon", "mlock", "adip", "passport", "chaow"} <= set(list_schemes())
    with pytest.raises(ValueError, match="unknown scheme"):
        create_scheme("nope")


def test_logistic_map_follows_its_recurrence():
    seq = logistic_sequence(0.3, 50, burn_in=0)
    assert seq[0] == pytest.approx(3.99 * 0.3 * 0.7)
    assert all(b == pytest.approx(3.99 * a * (1 - a)) for a, b in zip(seq, seq[1:], strict=False))


def test_chaow_right_key_restores_exact_weights_wrong_key_does_not():
    model = build_classifier("resnet18", 10, 3, 4)
    locked = lock(model, "owner")
    right, wrong = unlock(locked, "owner"), unlock(locked, "0wner")
    for name, w in model.state_dict().items():
        assert torch.equal(w, right.state_dict()[name]), name
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    moved = [
        n
        for n in convs
        if not torch.equal(locked.get_submodule(n).weight, model.get_submodule(n).weight)
    ]
    assert moved == convs  # every layer scrambled, none left as trained
    assert not torch.equal(
        wrong.get_submodule(convs[1]).weight, model.get_submodule(convs[1]).weight
    )
    # Same numbers, other places: parameters (and FLOPs) unchanged (Table X).
    assert torch.equal(
        locked.get_submodule(convs[1]).weight.flatten().sort().values,
        model.get_submodule(convs[1]).weight.flatten().sort().values,
    )


def test_passport_forged_or_missing_ruins_accuracy(tmp_path, data):
    cfg = ProtectConfig(limit_train=2000, limit_test=300, width=8, epochs=2, batch_size=64, lr=0.05)
    scheme = create_scheme("passport")
    scheme.train(cfg, tmp_path / "passport")
    x, y = data.test.images, data.test.labels
    right = accuracy(scheme.unlock(scheme.deployed()), x, y)
    forged = accuracy(scheme.forged(7), x, y)
    missing = accuracy(scheme.missing(), x, y)
    assert right >= 50, right
    assert forged <= right - 25 and missing <= right - 25, (right, forged, missing)
    assert signature_match(scheme.model) >= 90
    assert signature_match(set_passports(scheme.model, random_passports(scheme.model, 3))) < 80
    pf = scheme.params_flops((3, 32, 32))
    assert pf["key_params"] > 0


@pytest.mark.parametrize("name", ["mlock", "adip"])
def test_visible_patterns_are_fixed_and_far_below_activedaemon_psnr(name, data):
    x = data.test.images[:200]
    scheme = create_scheme(name)
    a, b = scheme.authorize(x, ["alice123"] * len(x)), scheme.authorize(x, ["bob45678"] * len(x))
    assert torch.equal(a, b)  # no user-specific token
    psnr = image_quality(a, x, with_lpips=False)["psnr"]
    # The invisible encoder (the paper's kind of token); the recommended recipe's JPEG-trained
    # encoder trades visibility for robustness (about 27 dB) and sits closer to the patches.
    ad = create_scheme("activedaemon", encoder="fashion-mnist-32")
    ad_psnr = image_quality(ad.authorize(x, "alice123"), x, with_lpips=False)["psnr"]
    assert ad_psnr > 30 and psnr < ad_psnr - 8, (psnr, ad_psnr)


def test_mlock_random_place_keeps_the_patch_whole():
    x = torch.zeros(20, 3, 32, 32)
    x[:, :, 5:20, 3:25] = torch.rand(20, 1, 15, 22)  # different content -> different places
    scheme = create_scheme("mlock", size=4, random_place=True)
    a = scheme.authorize(x, "u")
    red = (a[:, 0] == 1) & (a[:, 1] == 0) & (a[:, 2] == 0)
    assert (red.flatten(1).sum(1) == 16).all()
    assert len({tuple(r.nonzero()[0].tolist()) for r in red}) > 1


def test_poisoned_set_takes_a_token_maker(data):
    maker = create_scheme("adip").maker
    x, y = data.train.images[:200], data.train.labels[:200]
    cfg = PoisonConfig(gamma=0.3, kinds={"noise": 0.25}, seed=0)
    poisoned, cached = build_poisoned_set(x, y, 10, maker, cfg)
    auth = poisoned.kinds == AUTHORIZED
    assert not cached and (poisoned.kinds == kind_code("mismatched")).sum() == 0
    expected = (maker(x[auth], "u") * 255).round().to(torch.uint8)
    assert torch.equal(poisoned.images[auth], expected)
    assert torch.equal(poisoned.labels[auth], y[auth])
    assert (poisoned.labels[~auth] == 0).all()  # the single-target strategy


def test_attack_context_unlocks_a_weight_key(data):
    model = build_classifier("resnet18", 10, 3, 4)
    model.card = {"arch": "resnet18", "num_classes": 10, "channels": 3, "width": 4}
    with torch.no_grad():  # a model whose output is not constant, so scrambling shows
        model.net.fc.bias.copy_(torch.arange(10.0))
    locked = lock(model, "k")
    ctx = AttackContext(
        locked, None, data, fast=True, authorize=lambda im, ids: im, unlock=lambda m: unlock(m, "k")
    )
    assert ctx.baseline["A_ad"] == accuracy(model, data.test.images, data.test.labels)
    result = run_attack("pruning", ctx)
    assert result.curve["series"]["A_ad"][0] == ctx.baseline["A_ad"]
    with pytest.raises(ValueError, match="encoder or an authorize"):
        AttackContext(model, None, data)


def test_compare_fast_runs_every_applicable_attack_and_reuses_runs(tmp_path):
    from activedaemon.attacks import ATTACKS, NEEDS

    out = tmp_path / "cmp"
    caps = ["--attack-param", "extraction.queries=64", "--attack-param", "finetune.percents=[1]"]
    every = ["--attacks", ",".join(ATTACKS.names())]
    assert main(["compare", "--fast", "--out", str(out), "-q", *caps, *every]) == 0
    results = json.loads((out / "compare.json").read_text())
    for name, entry in results["schemes"].items():  # each attack ran or says what it lacks
        assert set(entry["attacks"]) | set(entry["skipped"]) == set(ATTACKS.names()), name
        for attack, why in entry["skipped"].items():
            assert any(NEEDS[n] in why for n in ATTACKS[attack].needs), (name, attack, why)
    assert set(results["schemes"]["activedaemon"]["attacks"]) == set(ATTACKS.names())
    assert "gradcam" in results["schemes"]["passport"]["attacks"]  # needs no decoder
    assert "transfer" in results["schemes"]["mlock"]["skipped"]  # needs the encoder
    # A rerun reuses the trained runs instead of training again.
    weights = sorted(out.rglob("weights.pt"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert main(["compare", "--fast", "--out", str(out), "-q", *caps]) == 0
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    results = json.loads((out / "compare.json").read_text())
    mlock_attacks = results["schemes"]["mlock"]["attacks"]
    assert mlock_attacks["extraction"]["params"]["queries"] == 64
    assert mlock_attacks["finetune"]["params"]["percents"] == [1]
    assert list(results["schemes"]) == ["activedaemon", "mlock", "adip", "passport", "chaow"]
    rows = {r["scheme"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert set(rows) == {"none (clean)", *results["schemes"]}
    for name in ("report.html", "samples.png", "pruning.png", "run.json", "config.yaml"):
        assert (out / name).is_file(), name
    report = (out / "report.html").read_text()
    for name, entry in results["schemes"].items():  # one attack row per scheme and attack
        for attack, result in entry["attacks"].items():
            row = f"<td>{name}</td><td>{attack}</td><td>{result['verdict']}</td>"
            assert row in report, row
    assert "max_gain_over_scratch" in report
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["seed"] == 0 and run["commit"]
    s = {n: e["row"] for n, e in results["schemes"].items()}
    # Table X pattern: passports add parameters and FLOPs, ChaoW adds nothing.
    assert s["passport"]["params"] > s["activedaemon"]["params"]
    assert s["passport"]["flops"] > s["activedaemon"]["flops"]
    clean = results["clean"]
    for name in ("activedaemon", "mlock", "adip", "chaow"):
        assert (s[name]["params"], s[name]["flops"]) == (clean["params"], clean["flops"]), name
    assert s["mlock"]["psnr"] < s["activedaemon"]["psnr"] and s["passport"]["psnr"] is None
    assert "gaussian" in results["schemes"]["chaow"]["skipped"]
    assert "pruning" in results["schemes"]["chaow"]["attacks"]
    assert results["schemes"]["chaow"]["extra"]["right_key_restores_exactly"] is True
