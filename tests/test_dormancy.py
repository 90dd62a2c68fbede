"""Deep dormancy: the audit's thieves keep their defining properties, and the protection options
that aim at dormancy train."""

import copy
import json

import pytest
import torch
import yaml
from torch import nn

from activedaemon.attacks import run_attack
from activedaemon.attacks.dormancy import (
    linear_probe,
    recalibrate_batchnorm,
    runner_up,
    stage_features,
)
from activedaemon.attacks.suite import load_context
from activedaemon.protect import ProtectConfig, train_classifier
from activedaemon.protect.dormancy import (
    DormancyConfig,
    class_variance_share,
    cross_fitted_probe_r2,
    dormancy_term,
)
from activedaemon.protect.models import StageTap, build_classifier, stage_names
from activedaemon.protect.objectives import OBJECTIVES, TrainBatch


def test_runner_up_of_a_one_class_model_is_read_from_the_other_classes():
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    logits = torch.zeros(6, 10)
    logits[:, 0] = 10.0  # every image gets class 0
    logits[torch.arange(6), labels] = 5.0  # ... and the true class second
    logits[torch.arange(6), (labels + 1) % 10] = 4.0
    first, in3, masked = runner_up(logits, labels)
    assert (first, in3, masked) == (100.0, 100.0, 0)
    logits[torch.arange(6), labels] = -1.0  # the true class last: never in the rest's top 3
    assert runner_up(logits, labels)[:2] == (0.0, 0.0)


def test_linear_probe_reads_separable_features_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=gen)
    signal = torch.nn.functional.one_hot(y, 4).float() + 0.1 * torch.randn(400, 4, generator=gen)
    assert linear_probe(signal[:200], y[:200], signal[200:], y[200:], 4) > 95
    noise = torch.randn(400, 16, generator=gen)
    assert linear_probe(noise[:200], y[:200], noise[200:], y[200:], 4) < 40


def test_stage_taps_and_batchnorm_recalibration():
    model = build_classifier("resnet18", 10, width=4)
    names = stage_names(model)
    assert names == ["net.layer1", "net.layer2", "net.layer3", "net.layer4"]
    feats = stage_features(model, torch.rand(5, 3, 32, 32), names, pools=(1, 2))
    assert [feats[n, 2].shape for n in names] == [(5, 16), (5, 32), (5, 64), (5, 128)]
    assert torch.allclose(feats[names[0], 1], feats[names[0], 2].view(5, 4, 4).mean(2), atol=1e-5)
    assert not model.get_submodule("net.layer1")._forward_hooks  # taps removed
    images = 0.8 + 0.1 * torch.rand(64, 3, 32, 32)
    recalibrate_batchnorm(model, images)
    # The first BatchNorm now holds the statistics of these images' first convolution.
    with torch.no_grad():
        conv = model.net.conv1((images - model.mean) / model.std)
    assert torch.allclose(model.net.bn1.running_mean, conv.mean((0, 2, 3)), atol=1e-4)
    assert not model.training


def test_class_variance_share_bounds_and_dormancy_term():
    labels = torch.arange(8).repeat(8)
    named = torch.nn.functional.one_hot(labels, 8).float()  # features name the class
    assert class_variance_share(named, labels, 8).item() == pytest.approx(1.0, abs=1e-3)
    # Features drawn the same way for every class: only the small-sample share (K-1)/N remains.
    blind = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0))
    assert class_variance_share(blind, torch.arange(8).repeat(500), 8).item() < 0.01
    # The term reads unauthorized rows only, through their stage outputs, and trains them.
    out = torch.randn(64, 4, 2, 2, requires_grad=True)
    kinds = torch.tensor([0, 1] * 32)
    stages = {"s": out + named[:, :4, None, None]}
    batch = TrainBatch(torch.zeros(64, 8), labels, labels, kinds, stages)
    term = dormancy_term(DormancyConfig(weight=1.0), batch, 8)
    term.backward()
    assert term.item() > 0
    assert out.grad[kinds == 0].abs().sum() == 0 and out.grad[kinds == 1].abs().sum() > 0


def test_protect_with_uniform_targets_and_dormancy_term(tiny_encoder, tmp_path):
    values = {
        "limit_train": 400, "limit_test": 50, "width": 4, "epochs": 1, "batch_size": 64,
        "encoder": str(tiny_encoder[1]), "objective": "uniform",
        "dormancy": {"weight": 0.5, "stages": ["net.layer3", "net.layer4"], "pool": 2},
    }  # fmt: skip
    run = train_classifier(ProtectConfig.from_dict(values), tmp_path / "dorm", progress=False)
    saved = json.loads((run / "run.json").read_text())
    assert yaml.safe_load((run / "config.yaml").read_text())["pieces"]["dormancy"]["weight"] == 0.5
    assert 0 < saved["metrics"]["history"][0]["train_dormancy_term"] <= 1
    with pytest.raises(ValueError, match="unknown objective .nope."):
        ProtectConfig.from_dict({"objective": "nope"})
    bad = {**values, "dormancy": {"weight": 0.5, "stages": ["layer9"]}}
    with pytest.raises(ValueError, match="unknown; stages"):
        train_classifier(ProtectConfig.from_dict(bad), tmp_path / "bad", progress=False)


def test_dormancy_audit_on_random_weights_stays_near_its_alternative(toy_runs, tiny_encoder):
    ctx = load_context(toy_runs[0], tiny_encoder[1], limit_test=300, fast=True)
    # A thief who stole an untrained network (other seed) gains nothing over random weights.
    torch.manual_seed(123)
    fresh = build_classifier("resnet18", 10, width=8)
    fresh.card = ctx.model.card
    ctx.model = fresh.eval()
    r = run_attack("dormancy", ctx, percents=(1.0,))
    probes = [v for k, v in r.metrics.items() if k.startswith("gain_probe")]
    assert len(probes) == 8  # 4 stages x 2 poolings
    assert max(probes) < 6, r.metrics
    assert abs(r.metrics["gain_finetune_p1"]) < 10, r.metrics
    assert r.curve["x_values"] == ["layer1", "layer2", "layer3", "layer4"]
    assert "largest gain" in r.notes[0]
    # Re-estimating an untrained network's BatchNorm does not make it a classifier.
    assert r.metrics["bn_output_p1"] < 25, r.metrics
    assert len(r.table) == 2 + 1 + 8 + 1 and {row["gain"] for row in r.table} <= set(
        round(v, 2) for k, v in r.metrics.items() if k.startswith("gain_")
    )


def test_stage_tap_keeps_graph():
    model = build_classifier("resnet18", 10, width=4)
    tap = StageTap(model, ["net.layer2"])
    model(torch.rand(2, 3, 32, 32))
    tap.outputs["net.layer2"].sum().backward()
    assert model.net.layer1[0].conv1.weight.grad is not None
    tap.close()


def test_uniform_objective_wants_no_ranking_for_unauthorized_samples():
    labels = torch.tensor([3, 3])
    kinds = torch.tensor([0, 1])  # one authorized, one clean
    logits = torch.zeros(2, 10, requires_grad=True)
    batch = TrainBatch(logits, torch.zeros(2, dtype=torch.long), labels, kinds, {})
    loss = OBJECTIVES["uniform"](batch, 1.0)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(10.0)).item())  # both at log K
    loss.backward()
    assert logits.grad[1].abs().max() < 1e-7  # flat logits are the clean sample's optimum
    assert logits.grad[0, 3] < 0  # the authorized one learns its true label


def test_cross_fitted_probe_scores_class_information_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (100,), generator=gen)
    noise = torch.randn(100, 128, generator=gen)
    mixed = torch.nn.functional.one_hot(y, 10).float() @ torch.randn(10, 128, generator=gen)
    signal = (0.3 * mixed + torch.randn(100, 128, generator=gen)).requires_grad_(True)
    assert cross_fitted_probe_r2(noise, y, 10).item() == 0.0
    score = cross_fitted_probe_r2(signal, y, 10)
    assert score.item() > 0.1
    score.backward()  # differentiable: the backbone can be trained against it
    assert signal.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dormancy.measure"):
        ProtectConfig.from_dict({"dormancy": {"measure": "nope"}})


def test_clean_referenced_batchnorm_uses_and_keeps_the_clean_rows_statistics():
    """Training mode: the clean rows' statistics normalize the whole batch and alone move the
    running statistics (as a plain BatchNorm fed only those rows); closing the piece leaves plain
    BatchNorm2d layers with the same state keys."""
    from activedaemon.protect.clean_bn import CleanBNConfig, CleanBNPiece
    from activedaemon.protect.pieces import PieceEnv
    from activedaemon.protect.poison import AUTHORIZED, CLEAN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    plain = copy.deepcopy(model[1])
    keys = set(model.state_dict())
    env = PieceEnv(model=model, device=torch.device("cpu"), num_classes=10, seed=0, rank=0)
    piece = CleanBNPiece(CleanBNConfig(enabled=True), env)
    x = torch.rand(8, 3, 6, 6)
    kinds = torch.tensor([CLEAN] * 3 + [AUTHORIZED] * 5)
    x[3:] += 5  # the other rows' statistics are far from the clean ones
    model.train()
    out = model(piece.perturb(x, TrainBatch(None, kinds, kinds=kinds)))
    features = model[0](x)
    expected = plain.train()(features[:3])  # a plain BatchNorm that sees only the clean rows
    assert torch.allclose(out[:3], expected, atol=1e-5)
    assert torch.allclose(model[1].running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, plain.running_var, atol=1e-5)
    piece.close()
    assert type(model[1]) is nn.BatchNorm2d and set(model.state_dict()) == keys
    with pytest.raises(ValueError, match="clean_bn"):
        CleanBNPiece(CleanBNConfig(enabled=True), PieceEnv(nn.Linear(2, 2), env.device, 2, 0, 0))
