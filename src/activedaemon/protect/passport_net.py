"""The passport classifier (DeepIPR, Fan et al., NeurIPS 2019): a CIFAR ResNet-18 whose deeper
normalisations take their scale and bias from secret passports. The classifier lives in the
classifier zoo, so that ``load_classifier`` builds a passport run's model from its card; the
scheme that trains and unlocks it is activedaemon.schemes.passport.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from activedaemon.protect.models import register_classifier, resnet18

PASSPORT_HW = 8  # spatial size of a passport; it is average-pooled, so any size works


class PassportNorm(nn.Module):
    """BatchNorm without affine, then gamma * x + beta with gamma, beta from the passports."""

    def __init__(self, conv: nn.Conv2d, seed: int) -> None:
        super().__init__()
        self._conv = (conv,)  # a reference, not a submodule (its weights live in the block)
        self.bn = nn.BatchNorm2d(conv.out_channels, affine=False)
        gen = torch.Generator().manual_seed(seed)
        shape = (1, conv.in_channels, PASSPORT_HW, PASSPORT_HW)
        self.register_buffer("passport_gamma", torch.randn(shape, generator=gen))
        self.register_buffer("passport_beta", torch.randn(shape, generator=gen))
        sign = torch.randint(0, 2, (conv.out_channels,), generator=gen) * 2 - 1
        self.register_buffer("signature", sign.float())

    def scale_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv = self._conv[0]
        w = conv.weight
        gamma = F.conv2d(self.passport_gamma, w, padding=conv.padding).mean((0, 2, 3))
        beta = F.conv2d(self.passport_beta, w, padding=conv.padding).mean((0, 2, 3))
        return gamma, beta

    def sign_loss(self) -> torch.Tensor:
        gamma, _ = self.scale_bias()
        return F.relu(0.1 - gamma * self.signature).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.scale_bias()
        return self.bn(x) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def passport_layers(model: nn.Module) -> list[PassportNorm]:
    return [m for m in model.modules() if isinstance(m, PassportNorm)]


@register_classifier("passport-resnet18")
def passport_resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> nn.Module:
    """The CIFAR ResNet-18 with passport layers in place of every BatchNorm of the last two
    stages (as DeepIPR passports the deeper layers). Passports are drawn from seed 0 here; the
    scheme sets the owner's."""
    net = resnet18(num_classes, in_channels, width)
    i = 0
    for stage in (net.layer3, net.layer4):
        for block in stage:
            block.bn1, block.bn2 = PassportNorm(block.conv1, i), PassportNorm(block.conv2, i + 1)
            i += 2
    return net
