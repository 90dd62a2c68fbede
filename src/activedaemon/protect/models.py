"""Classifier zoo: a registry of architectures, with normalisation inside (inputs in [0, 1])."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from activedaemon.registries import Registry

CLASSIFIERS: Registry[Callable[..., nn.Module]] = Registry(
    "classifier", ("activedaemon.protect.registered",)
)
register_classifier = CLASSIFIERS.register


def list_classifiers() -> list[str]:
    return CLASSIFIERS.names() + ["torchvision:NAME"]


class Normalized(nn.Module):
    """(x - mean) / std, then the network: callers always pass [0, 1] images."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _cifar_resnet(block, layers: list[int], num_classes: int, in_channels: int, width: int):
    """torchvision's ResNet with the CIFAR stem (3x3 conv, stride 1, no max-pool) and a width knob:
    stage widths width x (1, 2, 4, 8); 64 is the standard network, 16 or 32 suit CPU presets."""
    net = ResNet(block, layers, num_classes=num_classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.maxpool = nn.Identity()
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, 2 * width, layers[1], stride=2)
    net.layer3 = net._make_layer(block, 4 * width, layers[2], stride=2)
    net.layer4 = net._make_layer(block, 8 * width, layers[3], stride=2)
    net.fc = nn.Linear(8 * width * block.expansion, num_classes)
    return net


@register_classifier("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> nn.Module:
    return _cifar_resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width)


@register_classifier("resnet50")
def resnet50(num_classes: int, in_channels: int = 3, width: int = 64) -> nn.Module:
    return _cifar_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width)


def build_classifier(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    width: int = 64,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> Normalized:
    """``arch``: a registered name or ``torchvision:NAME`` (any torchvision classifier, no
    pretrained weights). Returns the network wrapped with normalisation."""
    if arch.startswith("torchvision:"):
        import torchvision.models as tvm

        name = arch.split(":", 1)[1]
        if name not in tvm.list_models(module=tvm):
            raise ValueError(f"torchvision has no classification model {name!r}")
        if in_channels != 3:
            raise ValueError(f"{arch} takes 3-channel images; load the data with channels=3")
        net = tvm.get_model(name, weights=None, num_classes=num_classes)
    else:
        net = CLASSIFIERS[arch](num_classes=num_classes, in_channels=in_channels, width=width)
    default = normalization(in_channels)
    return Normalized(net, mean or default["mean"], std or default["std"])


def normalization(in_channels: int) -> dict[str, list[float]]:
    """The per-channel mean and std every classifier subtracts and divides by inside its
    ``Normalized`` wrapper (callers pass [0, 1] images); recorded in the card."""
    return {"mean": [0.5] * in_channels, "std": [0.25] * in_channels}


def stage_names(model: nn.Module) -> list[str]:
    """The names (within ``model``) of the network's stages, in order, whose outputs the
    dormancy objective and the dormancy audit look at: a ResNet's ``layer1``..``layer4``, else
    every top-level child of the network but the last (the classifier head)."""
    net = model.net if isinstance(model, Normalized) else model
    prefix = "net." if isinstance(model, Normalized) else ""
    names = [n for n, _ in net.named_children() if n.startswith("layer")]
    if not names:
        names = [n for n, _ in net.named_children()][:-1]
    return [prefix + n for n in names]


class StageTap:
    """Keeps the outputs of named stages of ``model`` from its latest forward pass (forward
    hooks; ``close`` removes them): ``tap.outputs[name]`` is the stage's (N, C, H, W) output,
    still in the graph, so a loss on it trains the stage."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._hooks = [
            model.get_submodule(name).register_forward_hook(self._keep(name)) for name in names
        ]

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output

        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self.outputs.clear()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, bs: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images`` (no labels, no gradient;
    a cumulative average over the batches, then each layer's momentum as it was): "precise BN"
    for a trainer whose running averages lag behind fast-moving weights, and what a thief does
    to adapt a network to its own data for free. Changes ``model`` in place; returns it in eval
    mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    device = next(model.parameters()).device
    for i in range(0, len(images), bs):
        x = images[i : i + bs].to(device)
        model(x.float() / 255 if x.dtype == torch.uint8 else x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return model.eval()
