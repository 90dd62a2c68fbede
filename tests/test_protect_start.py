"""Protecting a classifier the owner already has (--from, Python protect) and the transit piece."""

import pytest
import torch
import yaml
from torch import nn

from activedaemon.cli import main
from activedaemon.protect import ProtectConfig, build_classifier, load_classifier
from activedaemon.protect.objectives import TrainBatch
from activedaemon.protect.pieces import PieceEnv, piece_config
from activedaemon.protect.start import load_start
from activedaemon.protect.train import protect
from activedaemon.protect.transit import TransitPiece

TINY = ["--limit-train", "300", "--epochs", "1", "--batch-size", "64", "-q"]


def test_start_from_a_run_folder_a_state_dict_and_torchscript(toy_runs, tmp_path):
    clean = load_classifier(toy_runs[1])
    model = build_classifier("resnet18", 10, 3, 8)
    record = load_start(model, str(toy_runs[1]))
    assert record == {"from": str(toy_runs[1]), "fresh_head": False}
    assert all(torch.equal(v, clean.state_dict()[k]) for k, v in model.state_dict().items())

    bare = build_classifier("resnet18", 10, 3, 4).net  # a network without our wrapper
    torch.save(bare.state_dict(), tmp_path / "bare.pt")
    with pytest.warns(FutureWarning):  # deprecated, yet how owners still ship models
        torch.jit.save(torch.jit.script(bare), tmp_path / "bare.ts")
    for name in ("bare.pt", "bare.ts"):
        target = build_classifier("resnet18", 10, 3, 4)
        record = load_start(target, str(tmp_path / name))
        assert len(record["from_sha256"]) == 64
        assert torch.equal(target.net.conv1.weight, bare.conv1.weight)
    five = build_classifier("resnet18", 5, 3, 4)  # another class count: a fresh head
    assert load_start(five, str(tmp_path / "bare.pt"))["fresh_head"] is True
    with pytest.raises(ValueError, match="another architecture"):
        load_start(build_classifier("resnet18", 10, 3, 8), str(tmp_path / "bare.pt"))
    with pytest.raises(FileNotFoundError):
        load_start(model, str(tmp_path / "missing.pt"))


def test_cli_protect_from_a_clean_run_and_a_torchvision_state_dict(toy_runs, tmp_path, capsys):
    out = tmp_path / "from-run"
    argv = ["protect", "--from", str(toy_runs[1]), "--width", "8", "--out", str(out), *TINY]
    assert main(argv) == 0
    card = yaml.safe_load((out / "card.yaml").read_text())
    assert card["from"] == str(toy_runs[1]) and card["arch"] == "resnet18"

    weights = tmp_path / "mnv3.pt"  # the owner's torchvision network, saved as a state dict
    torch.save(build_classifier("torchvision:mobilenet_v3_small", 10).net.state_dict(), weights)
    out = tmp_path / "from-file"
    argv = ["protect", "--arch", "torchvision:mobilenet_v3_small", "--from", str(weights)]
    assert main([*argv, "--out", str(out), *TINY]) == 0
    assert yaml.safe_load((out / "card.yaml").read_text())["from_sha256"]
    # Pretrained torchvision weights need the network (or the hub cache): a clear error here.
    code = main(["protect", "--from", "torchvision:resnet18", "--out", str(tmp_path / "tv"), *TINY])
    err = capsys.readouterr().err
    assert code == 0 or "could not load its pretrained weights" in err


def test_python_protect_locks_the_owners_own_module(tmp_path):
    class Small(nn.Module):  # the owner's own network: [0, 1] images in, logits out
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten())
            self.head = nn.Linear(8 * 16 * 16, 10)

        def forward(self, x):
            return self.head(self.body(x - 0.5))

    net = Small()
    before = net.head.weight.clone()
    got = protect(net, tmp_path / "own", progress=False, limit_train=300, epochs=1, batch_size=64)
    assert got is net and not torch.equal(net.head.weight, before)
    card = yaml.safe_load((tmp_path / "own" / "card.yaml").read_text())
    assert card["arch"].startswith("module:") and card["protected"] and card["encoder"]
    with pytest.raises(ValueError, match="load_state_dict"):
        load_classifier(tmp_path / "own")


def test_transit_piece_sends_rows_through_jpeg_or_noise_and_keeps_labels():
    cfg = piece_config("transit", {"fraction": 1.0, "p_jpeg": 1.0})
    env = PieceEnv(nn.Linear(1, 1), torch.device("cpu"), 10, seed=0, rank=0)
    piece = TransitPiece(cfg, env)
    x = torch.rand(8, 3, 32, 32)
    batch = TrainBatch(None, torch.arange(8))
    y = piece.perturb(x, batch)
    assert not torch.equal(x, y) and torch.equal(batch.labels, torch.arange(8))
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)  # 8-bit, as received
    noisy = TransitPiece(piece_config("transit", {"fraction": 0.5, "p_jpeg": 0.0}), env)
    z = noisy.perturb(x, batch)
    assert (z != x).flatten(1).any(1).sum() == 4  # half of the rows crossed the channel
    assert not TransitPiece.enabled(piece_config("transit", {}))
    with pytest.raises(ValueError, match="jpeg_quality"):
        ProtectConfig.from_dict({"transit": {"jpeg_quality": [95, 75]}})


def test_precise_bn_reestimates_statistics_and_keeps_momentum():
    from activedaemon.protect.models import recalibrate_batchnorm

    model = build_classifier("resnet18", 10, 3, 4)
    images = (torch.rand(64, 3, 32, 32) * 255).to(torch.uint8)
    recalibrate_batchnorm(model, images, bs=16)
    bn = model.net.bn1
    assert bn.momentum == 0.1 and not model.training
    with torch.no_grad():  # the first BN's mean is the batch mean of its input, over all images
        first = model.net.conv1((images.float() / 255 - 0.5) / 0.25)
    assert torch.allclose(bn.running_mean, first.mean((0, 2, 3)), atol=1e-4)
