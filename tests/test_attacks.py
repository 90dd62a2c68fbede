"""The attack suite: every registered attack runs in fast mode and keeps its defining property."""

import json
import math

import pytest
import torch
from torch import nn

from activedaemon.attacks import AttackResult, list_attacks, run_attack, threat_model
from activedaemon.attacks.pruning import pruned_copy
from activedaemon.attacks.reverse import universal_perturbation
from activedaemon.attacks.stolen import fit_surrogate
from activedaemon.attacks.suite import load_context
from activedaemon.attacks.training import copy_with_head
from activedaemon.cli import main
from activedaemon.imageio import jpeg_round_trip as jpeg
from activedaemon.metrics import gaussian_fake_tokens
from activedaemon.protect import ProtectConfig, train_classifier
from activedaemon.protect.adversarial import AdversarialConfig, UniversalNegatives, project
from activedaemon.protect.objectives import information_maximisation


@pytest.fixture(scope="module")
def ctx(toy_runs, tiny_encoder, tmp_path_factory):
    return load_context(
        toy_runs[0], tiny_encoder[1], limit_test=200, fast=True,
        out=tmp_path_factory.mktemp("attacks"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(ctx):
    return {name: run_attack(name, ctx) for name in list_attacks()}


def test_registry_has_every_attack_of_the_issue():
    assert set(list_attacks()) >= {
        "gaussian", "deteriorated", "mismatched", "reverse", "stolen", "extraction",
        "finetune", "transfer", "pruning", "gradcam", "transit",
    }  # fmt: skip
    for name in list_attacks():
        assert len(threat_model(name)) > 30


def test_every_attack_returns_a_complete_result(results, ctx):
    for name, r in results.items():
        assert isinstance(r, AttackResult) and r.name == name
        assert r.verdict in ("holds", "broken", "info"), name
        assert r.verdict == "info" or r.target, name
        assert r.metrics["A_ad"] == ctx.baseline["A_ad"]
        for key, value in r.metrics.items():
            assert value is None or math.isfinite(value), (name, key)
        if r.curve:
            for series in r.curve["series"].values():
                assert len(series) == len(r.curve["x_values"]), name
        for path in r.figures:
            assert path.endswith(".png")
        json.dumps(r.to_dict())  # serialisable as written to attacks.json


def test_toy_lock_separates_before_attacks(ctx):
    assert ctx.baseline["A_ad"] > ctx.baseline["A_ud"] + 20


def test_deteriorated_endpoints_equal_real_token_and_clean(results, ctx):
    curve = results["deteriorated"].curve
    kept = curve["series"]["token pixels kept"]
    assert curve["x_values"][0] == 0 and curve["x_values"][-1] == 1
    assert kept[-1] == pytest.approx(ctx.baseline["A_ad"])
    assert kept[0] == pytest.approx(ctx.baseline["A_ud"])
    pasted = curve["series"]["authorized crop pasted"]
    assert pasted[-1] == pytest.approx(ctx.baseline["A_ad"])


def test_pruning_at_zero_changes_nothing_and_prunes_the_asked_fraction(results, ctx):
    r = results["pruning"]
    assert r.metrics["A_ad_0"] == ctx.baseline["A_ad"]
    assert r.metrics["A_ud_0"] == ctx.baseline["A_ud"]
    before = [p.clone() for p in ctx.model.parameters()]
    pruned = pruned_copy(ctx.model, 0.5)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights)
    assert 0.5 <= zeros < 0.52
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))


def test_gaussian_fakes_have_the_tokens_size():
    tokens = torch.rand(6, 3, 8, 8) * 0.1
    fake = gaussian_fake_tokens(tokens, seed=0)
    assert torch.allclose(fake.flatten(1).norm(dim=1), tokens.flatten(1).norm(dim=1), atol=1e-5)
    clipped = gaussian_fake_tokens(tokens, seed=0, match_linf=True)
    linf = tokens.flatten(1).abs().amax(1)
    assert (clipped.flatten(1).abs().amax(1) <= linf + 1e-7).all()


def test_projection_and_universal_perturbation_stay_in_budget(ctx):
    delta = project(torch.randn(1, 3, 32, 32), 0.1, 1.0)
    assert delta.abs().max() <= 0.1 + 1e-7 and delta.norm() <= 1.0 + 1e-5
    x, y = ctx.data.train.images[:128], ctx.data.train.labels[:128]
    found = universal_perturbation(
        ctx.model, x, y, linf=0.05, l2=0.5, steps=5, lr=0.01, batch=32, seed=0
    )
    assert found.abs().max() <= 0.05 + 1e-6 and found.norm() <= 0.5 + 1e-5


def test_surrogate_learns_a_constant_residual():
    clean = torch.rand(32, 3, 16, 16)
    residual = torch.linspace(-0.1, 0.1, 3 * 16 * 16).view(1, 3, 16, 16).expand(32, -1, -1, -1)
    model = fit_surrogate(clean, residual, steps=300, seed=0)
    with torch.no_grad():
        err = (model(torch.rand(4, 3, 16, 16)) - residual[:4]).abs().mean()
    assert err < 0.02


def test_model_changing_attacks_work_on_copies(ctx):
    before = [p.clone() for p in ctx.model.parameters()]
    run_attack("finetune", ctx)
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))
    head = copy_with_head(ctx.model, 4)
    assert head(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert ctx.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_transit_identity_and_jpeg_roundtrip(results, ctx):
    metrics = results["transit"].metrics
    assert metrics["A_ad none"] == ctx.baseline["A_ad"]
    # Every shipped 32x32x3 encoder is shown beside the model's own, on the same images.
    assert metrics["decoded none via fashion-mnist-32"] >= 99
    assert (
        metrics["decoded jpeg q50 via fashion-mnist-32"]
        < metrics["decoded none via fashion-mnist-32"]
    )
    x = ctx.test_x[:8]
    assert (jpeg(x, 100) - x).abs().mean() < 0.01
    assert (jpeg(x, 20) - x).abs().mean() > (jpeg(x, 95) - x).abs().mean()


def test_gradcam_figure_and_range(results):
    r = results["gradcam"]
    assert 0 <= r.metrics["cam_cosine_clean_vs_authorized"] <= 1
    assert r.figures and all(p.endswith("gradcam.png") for p in r.figures)


def test_cli_attack_writes_json_figures_and_report(toy_runs, tiny_encoder, tmp_path, capsys):
    out = tmp_path / "atk"
    argv = ["attack", "gaussian", "pruning", "--fast", "-q", "--model", str(toy_runs[0]),
            "--encoder", str(tiny_encoder[1]), "--limit-test", "100",
            "--out", str(out), "--attack-param", "pruning.rates=[0, 0.5]"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((out / "attacks.json").read_text())
    assert set(saved["attacks"]) == {"gaussian", "pruning"}
    assert saved["attacks"]["pruning"]["curve"]["x_values"] == [0, 0.5]
    assert (out / "pruning.png").is_file()
    page = (out / "report.html").read_text()
    assert "Threat model" in page and "data:image/png;base64" in page
    assert "pruning" in capsys.readouterr().out
    assert main(["attack", "nope", "--model", str(toy_runs[0])]) == 2


def test_label_free_pool_attacker_lowers_information_maximisation():
    """With ``objective: im`` the pool is trained as the label-free thief trains its key: its
    loss falls on a fixed model, whatever labels the rows carry."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    model[1].weight.data *= 20  # outputs that a change inside the budget can move
    cfg = AdversarialConfig(fraction=1.0, pool=1, step=0.2, budget_scale=1.0, objective="im")
    neg = UniversalNegatives(cfg, (3, 8, 8), 0.3, 3.0, seed=0, device=torch.device("cpu"))
    x, unauth = torch.rand(32, 3, 8, 8), torch.ones(32, dtype=torch.bool)
    wrong = torch.randint(10, (32,))

    def im_loss():
        with torch.no_grad():
            return information_maximisation(model((x + neg.pool[0]).clamp(0, 1))).item()

    before = im_loss()
    for _ in range(10):
        new, rows, j, delta = neg.perturb(x, unauth)
        neg.update(j, delta, model(new)[rows], wrong[rows])
    assert im_loss() < before - 0.05
    assert neg.pool.abs().max() <= 0.3 + 1e-6


def test_refresh_replaces_the_oldest_member_with_a_searched_key():
    """A refresh searches from a fresh start on the model in eval mode: the new member beats the
    one it replaces on the thief's loss, stays in the budget, and the next refresh takes the next
    member; the model's weights, BatchNorm statistics and mode are left as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.BatchNorm1d(10))
    model[1].weight.data *= 20
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AdversarialConfig(fraction=0.5, pool=2, budget_scale=1.0, objective="im",
                            refresh_every=1, refresh_steps=30)  # fmt: skip
    neg = UniversalNegatives(cfg, (3, 8, 8), 0.3, 3.0, seed=0, device=torch.device("cpu"))
    x, labels = torch.rand(32, 3, 8, 8), torch.zeros(32, dtype=torch.long)
    model.eval()

    def im_loss(member):
        with torch.no_grad():
            return information_maximisation(model((x + neg.pool[member]).clamp(0, 1))).item()

    before, second = im_loss(0), neg.pool[1].clone()
    model.train()
    neg.refresh(model, x, labels)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.eval()
    assert im_loss(0) < before - 0.05 and torch.equal(neg.pool[1], second)
    assert neg.pool.abs().max() <= 0.3 + 1e-6 and neg.oldest == 1
    with pytest.raises(ValueError, match="refresh"):
        ProtectConfig.from_dict({"adversarial": {"fraction": 0.5, "refresh_every": -1}})


def test_adversarial_negatives_stay_in_budget_and_train(tiny_encoder, tmp_path):
    cfg = AdversarialConfig(fraction=0.5, pool=3, step=0.5, budget_scale=1.0)
    neg = UniversalNegatives(cfg, (3, 8, 8), 0.1, 0.5, seed=0, device=torch.device("cpu"))
    x = torch.rand(8, 3, 8, 8)
    unauth = torch.tensor([True] * 6 + [False] * 2)
    new, rows, j, delta = neg.perturb(x, unauth)
    assert rows.tolist() == [0, 1, 2] and torch.equal(new[3:], x[3:])
    logits = nn.Linear(3 * 8 * 8, 10)(new.flatten(1))
    neg.update(j, delta, logits[rows], torch.zeros(3, dtype=torch.long))
    assert neg.pool.abs().max() <= 0.1 + 1e-6
    assert (neg.pool.flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    with pytest.raises(ValueError, match="fraction"):
        ProtectConfig.from_dict({"adversarial": {"fraction": 2}})
    with pytest.raises(ValueError, match="objective"):
        ProtectConfig.from_dict({"adversarial": {"fraction": 0.5, "objective": "nope"}})
    cfg = ProtectConfig.from_dict(
        {"limit_train": 300, "limit_test": 50, "width": 4, "epochs": 1, "batch_size": 64,
         "encoder": str(tiny_encoder[1]), "adversarial": {"fraction": 0.5}}
    )  # fmt: skip
    run = train_classifier(cfg, tmp_path / "adv", progress=False)
    saved = json.loads((run / "run.json").read_text())
    assert saved["metrics"]["token_budget"]["linf"] > 0
