"""The attacker's training loop (substitutes, fine-tuning): plain SGD with a cosine schedule."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from activedaemon.protect.models import build_classifier


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 128,
    progress: bool = False,
    desc: str = "attacker training",
) -> nn.Module:
    """Train ``model`` in place on (images, labels) and return it in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = max(1, epochs * -(-len(images) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(total=steps, desc=desc, disable=not progress, mininterval=1.0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return model.eval()


def fresh_like(model: nn.Module, num_classes: int | None = None) -> nn.Module:
    """An untrained classifier of the protected model's architecture (from its card)."""
    card = model.card
    return build_classifier(
        card["arch"], num_classes or card["num_classes"], card["channels"], card["width"]
    ).to(next(model.parameters()).device)


def copy_with_head(model: nn.Module, num_classes: int | None = None) -> nn.Module:
    """A copy of ``model``; with ``num_classes``, its last linear layer is replaced by a new one
    of that many outputs (transfer to another task)."""
    model = copy.deepcopy(model)
    if num_classes is None:
        return model
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))
    return model
