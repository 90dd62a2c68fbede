"""Active thieves without a token (attacks.wake), the quick audit and its report section, and the
defences aimed at them (protect.wakeup): each keeps its defining property on small real inputs."""

import shutil

import pytest
import torch
import yaml
from torch import nn

from activedaemon.attacks import run_attack
from activedaemon.attacks.audit import thief_audit
from activedaemon.attacks.suite import load_context
from activedaemon.attacks.wake import (
    knn_accuracy,
    label_free_key,
    per_query_wakeup,
    shot_adapt,
)
from activedaemon.data import load_dataset
from activedaemon.evaluate.report import thieves_section, write_report
from activedaemon.metrics import accuracy
from activedaemon.protect import ProtectConfig, train_classifier
from activedaemon.protect.models import build_classifier
from activedaemon.protect.objectives import OBJECTIVES, TrainBatch, information_maximisation
from activedaemon.protect.pieces import PieceEnv
from activedaemon.protect.poison import AUTHORIZED
from activedaemon.protect.wakeup import (
    SmoothingConfig,
    SmoothingPiece,
    WakeupConfig,
    WakeupPiece,
)
from activedaemon.tokens.generator import SHIPPED_DIR, is_shipped_encoder


@pytest.fixture(scope="module")
def fashion():
    data = load_dataset("fashion-mnist", size=32, channels=3, limit_train=300, limit_test=200)
    return data


class Ignores(nn.Module):
    """A model whose answer does not depend on its input (always class 3)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 0, 0, 5, 0, 0, 0, 0, 0, 0]))

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_per_query_thief_on_a_model_that_ignores_its_input_stays_at_chance(fashion):
    x, y = fashion.test.images, fashion.test.labels
    model = Ignores()
    moved = per_query_wakeup(model, x, radius=2.0, steps=5, restarts=2)
    assert (moved - x).flatten(1).norm(dim=1).max() <= 2.0 + 1e-4  # inside the ball
    assert accuracy(model, moved, y) == accuracy(model, x, y) == 100 * (y == 3).float().mean()


class ShiftGate(nn.Module):
    """Answers the true class of the stored images only when they are brightened by more than
    0.01 on average (class 0 otherwise): a wake-up direction that costs an L2 norm of about 0.6
    on a 32 x 32 x 3 image."""

    def __init__(self, x, y):
        super().__init__()
        self.x0, self.truth = x, nn.functional.one_hot(y, 10).float() * 10
        self.dormant = torch.tensor([8.0] + [0.0] * 9)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        shift = (z - self.x0).flatten(1).mean(1, keepdim=True)
        gate = torch.sigmoid(200 * (shift - 0.01))
        return gate * self.truth + (1 - gate) * self.dormant


def test_per_query_thief_wakes_a_model_that_opens_under_a_small_shift(fashion):
    x, y = fashion.test.images, fashion.test.labels
    model = ShiftGate(x, y)
    assert accuracy(model, x, y) < 20
    # The model compares each image with its stored twin: the search sees all of them at once.
    search = dict(steps=10, restarts=1, batch=len(x))
    woken = accuracy(model, per_query_wakeup(model, x, radius=2.0, **search), y)
    too_small = accuracy(model, per_query_wakeup(model, x, radius=0.1, **search), y)
    assert woken > 80 and too_small < 20, (woken, too_small)


def test_label_free_key_on_an_untrained_model_gains_nothing(fashion):
    torch.manual_seed(0)
    model = build_classifier("resnet18", 10, 3, 4).eval()
    x, y = fashion.test.images, fashion.test.labels
    key = label_free_key(
        model, fashion.train.images, linf=0.1, l2=2.0, steps=30, restarts=2, seed=0
    )
    assert key.abs().max() <= 0.1 + 1e-6 and key.norm() <= 2.0 + 1e-4
    assert accuracy(model, (x + key).clamp(0, 1), y) <= 100 / 10 + 10


def test_information_maximisation_prefers_confident_and_diverse_answers():
    confident_diverse = torch.eye(10) * 20
    confident_same = torch.zeros(10, 10)
    confident_same[:, 0] = 20
    uniform = torch.zeros(10, 10)
    im = information_maximisation
    assert im(confident_diverse) < im(uniform) and im(confident_diverse) < im(confident_same)


def test_knn_reads_separable_data_and_shot_keeps_the_head():
    a = torch.rand(40, 3, 8, 8) * 0.2
    labels = torch.arange(40) % 2
    a[labels == 0, :, :, :4] += 1  # class 0 bright on the left, class 1 on the right
    a[labels == 1, :, :, 4:] += 1
    assert knn_accuracy(a[:20], labels[:20], a[20:], labels[20:]) == 100
    torch.manual_seed(0)
    model = build_classifier("resnet18", 10, 3, 4)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.clone()
    adapted = shot_adapt(model, torch.rand(64, 3, 32, 32), epochs=1, lr=0.01, seed=0)
    new_head = [m for m in adapted.modules() if isinstance(m, nn.Linear)][-1].weight
    assert torch.equal(head, new_head)
    assert not all(
        torch.equal(p, q) for p, q in zip(model.parameters(), adapted.parameters(), strict=True)
    )


def _batch(n=16):
    kinds = torch.tensor([AUTHORIZED] * 4 + [1] * (n - 4))
    labels = torch.arange(n) % 10
    return TrainBatch(None, labels, labels, kinds)


def _env(model):
    info = {"token_budget": {"linf": 0.05, "l2": 0.8}}
    return PieceEnv(model, torch.device("cpu"), 10, 0, 0, info, OBJECTIVES["uniform"], 1.0)


def test_wakeup_piece_moves_only_unauthorized_rows_inside_the_ball():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 10, 3, 4).train()
    stats = [b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")]
    piece = WakeupPiece(WakeupConfig(fraction=1.0, steps=3, budget_scale=1.0), _env(model))
    x, batch = torch.rand(16, 3, 32, 32), _batch()
    moved = piece.perturb(x, batch)
    change = (moved - x).flatten(1).norm(dim=1)
    assert torch.equal(moved[:4], x[:4]) and (change[4:] > 0).all()
    assert change.max() <= 0.8 + 1e-4
    # The search leaves BatchNorm's running statistics alone.
    after = [b for n, b in model.named_buffers() if n.endswith("running_mean")]
    assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))
    # It raises the objective on the moved rows (the worst neighbour, not a random one).
    labels = batch.labels[4:]

    def objective(images):
        with torch.no_grad():
            logits = model(images[4:])
        return OBJECTIVES["uniform"](TrainBatch(logits, labels, labels, batch.kinds[4:]), 1.0)

    assert objective(moved) > objective(x)


def test_smoothing_piece_noises_only_unauthorized_rows():
    model = build_classifier("resnet18", 10, 3, 4)
    piece = SmoothingPiece(SmoothingConfig(fraction=0.5, sigma=0.1), _env(model))
    x, batch = torch.rand(16, 3, 32, 32), _batch()
    noised = piece.perturb(x, batch)
    changed = (noised != x).flatten(1).any(1)
    assert not changed[:4].any() and changed.sum() == 6  # half of the 12 unauthorized rows
    with pytest.raises(ValueError, match="smoothing"):
        SmoothingConfig(fraction=2).validate()


def test_protect_with_wakeup_and_warm_start(tiny_encoder, tmp_path):
    values = {
        "limit_train": 300, "limit_test": 50, "width": 4, "epochs": 1, "batch_size": 64,
        "encoder": str(tiny_encoder[1]), "objective": "uniform", "warm_start": "tiny",
        "wakeup": {"fraction": 0.5, "steps": 2}, "smoothing": {"fraction": 0.2},
    }  # fmt: skip
    run = train_classifier(ProtectConfig.from_dict(values), tmp_path / "p", progress=False)
    # The clean model it started from was trained first, in the run folder.
    assert (run / "start" / "weights.pt").is_file()
    assert yaml.safe_load((run / "card.yaml").read_text())["from"] == str(run / "start")
    with pytest.raises(ValueError, match="warm_start"):
        ProtectConfig.from_dict({**values, "warm_start": "no-such-preset"})


def test_wake_attack_and_quick_audit_in_the_report(toy_runs, tiny_encoder, tmp_path):
    ctx = load_context(toy_runs[0], tiny_encoder[1], limit_test=200, fast=True)
    r = run_attack("wake", ctx)
    thieves = {row["thief"] for row in r.table}
    assert thieves == {
        "per-query wake-up",
        "label-free universal key",
        "universal key, cross-entropy",
        "source-free adaptation (SHOT)",
    }
    assert r.verdict in ("holds", "broken") and "Threat model" not in r.threat_model
    assert r.curve["x_values"] == [0.5, 1.0] and len(r.curve["series"]) == 2
    audit = thief_audit(ctx)
    assert audit["largest"]["gain"] == max(
        row["gain"] for row in audit["rows"] if (row["budget (x token)"] or 0) <= 1
    )
    assert "largest gain" in audit["verdict"]
    html_text = thieves_section(audit, shipped_encoder=True)
    assert "What a thief gets without a token" in html_text and "public" in html_text
    results = {"dataset": "fashion-mnist", "A_ud": audit["A_ud"], "per_user": []}
    page = write_report(results, tmp_path / "r.html", thieves=html_text).read_text()
    assert "per-query wake-up" in page
    assert "Not measured" in thieves_section(None, shipped_encoder=False)


def test_shipped_encoders_are_recognised_wherever_they_lie(tiny_encoder, tmp_path):
    assert is_shipped_encoder("fashion-mnist-32")
    shutil.copytree(SHIPPED_DIR / "fashion-mnist-32", tmp_path / "copy")
    assert is_shipped_encoder(tmp_path / "copy")
    assert not is_shipped_encoder(tiny_encoder[1])


def test_a_saved_encoder_is_readable_by_its_owner_only(tmp_path):
    from activedaemon.tokens import TokenGenerator

    saved = TokenGenerator.load("fashion-mnist-32").save(tmp_path / "key")
    assert (saved / "weights.pt").stat().st_mode & 0o777 == 0o600
    assert TokenGenerator.load(saved).identify(torch.zeros(1, 3, 32, 32)) == [None]
