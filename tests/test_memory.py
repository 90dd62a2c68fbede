"""The in-memory training set without float copies of the whole set: 8-bit storage made block by
block, grey images made RGB as a view, and the same values (so the same weights) as before."""

import torch

from activedaemon.data.datasets import load_dataset
from activedaemon.imageio import take_rows, to_uint8, to_uint8_rows
from activedaemon.protect.poison import PoisonConfig, build_poisoned_set
from activedaemon.tokens import TokenGenerator


def test_blockwise_uint8_and_row_views_give_the_same_values():
    x = torch.rand(37, 3, 8, 8) * 1.2 - 0.1
    assert torch.equal(to_uint8_rows(x, rows=5), to_uint8(x))
    grey = torch.rand(20, 1, 8, 8).expand(-1, 3, -1, -1)
    idx = torch.randperm(20)[:9]
    rows = take_rows(grey, idx)
    assert rows.stride(1) == 0 and torch.equal(rows, grey.contiguous()[idx])
    assert torch.equal(to_uint8_rows(rows, rows=4), to_uint8(grey.contiguous()[idx]))


def test_grey_view_loads_the_same_values(tmp_path):
    kw = {"size": 32, "channels": 3, "limit_train": 50, "limit_test": 0}
    view = load_dataset("fashion-mnist", **kw, grey_view=True)
    copy = load_dataset("fashion-mnist", **kw)
    assert view.train.images.stride(1) == 0 and len(view.test) == 0
    assert torch.equal(view.train.images, copy.train.images)


def test_poisoned_set_of_a_view_is_the_poisoned_set_of_its_copy():
    """Made from a grey view (as protect now loads the data) or a float copy (as before): the
    same 8-bit images, labels, kinds and token RMS, and the same global random state after
    (the classifier's initial weights are drawn next)."""
    gen = TokenGenerator.load("fashion-mnist-32")
    grey = torch.rand(120, 1, 32, 32)
    labels = torch.arange(120) % 10
    sets, states = [], []
    for images in (grey.expand(-1, 3, -1, -1), grey.expand(-1, 3, -1, -1).contiguous()):
        torch.manual_seed(0)
        cfg = PoisonConfig(gamma=0.25, seed=0)
        sets.append(build_poisoned_set(images, labels, 10, gen, cfg)[0])
        states.append(torch.get_rng_state())
    a, b = sets
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
    assert torch.equal(a.labels, b.labels) and torch.equal(a.kinds, b.kinds)
    assert a.token_rms == b.token_rms and torch.equal(*states)


def test_authorized_rows_made_in_chunks_are_the_rows_made_at_once(monkeypatch):
    """Protection makes the authorized images a chunk of rows at a time: chunk boundaries (and
    the ids each chunk takes) leave the set as made in one piece; the token RMS agrees to float
    precision."""
    import activedaemon.protect.poison as poison

    def maker(x, ids):  # a token that depends on the image and on its id
        shift = torch.tensor([sum(map(ord, i)) % 7 for i in ids], dtype=torch.float32)
        return (x + 0.01 * shift.view(-1, 1, 1, 1) + 0.02 * x.flip(-1)).clamp(0, 1)

    grey = torch.rand(50, 1, 8, 8)
    labels = torch.arange(50) % 10
    sets = []
    for chunk in (3, 10_000):
        monkeypatch.setattr(poison, "AUTHORIZED_CHUNK", chunk)
        cfg = PoisonConfig(gamma=0.5, seed=0)
        sets.append(build_poisoned_set(grey.expand(-1, 3, -1, -1), labels, 10, maker, cfg)[0])
    a, b = sets
    assert torch.equal(a.images, b.images) and torch.equal(a.kinds, b.kinds)
    assert abs(a.token_rms - b.token_rms) < 1e-6 and a.token_rms > 0
