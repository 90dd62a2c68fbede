"""A new classifier in one file: ``--arch tiny-cnn`` (or ``arch: tiny-cnn`` in a preset).

Drop this file into ``src/activedaemon/protect/`` (or name its module in
``$ACTIVEDAEMON_PLUGINS``). The registered function gets the number of classes, input channels
and the ``width`` knob; ``build_classifier`` wraps it with the input normalisation, and the run's
card names the architecture so that ``load_classifier`` rebuilds it.
"""

from __future__ import annotations

from torch import nn

from activedaemon.protect.models import register_classifier


@register_classifier("tiny-cnn")
def tiny_cnn(num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:
    """Three conv-BN-ReLU stages (stride 2 after the first) and a linear head. The stages are
    named ``layer1``.. so that the dormancy piece and audit find them."""

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    net = nn.Sequential()
    net.add_module("layer1", stage(in_channels, width, 1))
    net.add_module("layer2", stage(width, 2 * width, 2))
    net.add_module("layer3", stage(2 * width, 4 * width, 2))
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("fc", nn.Linear(4 * width, num_classes))
    return net
