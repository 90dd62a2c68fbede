"""The authors' token networks, for benchmarks only (not part of the package).

The ActiveDaemon authors' code uses a PyTorch port of StegaStamp (REFERENCE.md): an encoder whose
secret goes through a dense layer to a 3 x (S/8) x (S/8) map, 8x nearest-upsampled, and a U-Net
of plain 3x3 convs (32-32-64-128-256, no BatchNorm; upsampling + 2x2 conv on the way up, then
two 3x3 convs and a 1x1 conv at full resolution, as the original TensorFlow StegaStamp); a decoder
with a spatial transformer (STN) in front of 7 convs and two dense layers. Written here from that
design; the only change for another image size S (and 127 bits) is in the dense layers' sizes,
as the authors would have to resize them. Same call signatures as ours:
``encoder(images, codewords) -> residual`` and ``decoder(images) -> logits`` (the authors apply
the sigmoid inside the decoder; here the loss does, as for our decoder).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from activedaemon.identity import CODE_BITS

# The 2x2 "same" convs pad a copy of their input; that cost is part of this design.
warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")


def conv(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    pad = 1 if stride == 2 else "same"  # TF's "same"; PyTorch refuses "same" with stride 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, pad), nn.ReLU(inplace=True))


def _side(size: int, halvings: int) -> int:
    for _ in range(halvings):  # a 3x3 stride-2 conv with padding 1: ceil(n / 2)
        size = (size + 1) // 2
    return size


class StegaStampEncoder(nn.Module):
    def __init__(self, image_size: int, channels: int = 3, bits: int = CODE_BITS) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError("the U-Net halves the image 4 times: image_size % 16 must be 0")
        self.low = image_size // 8
        self.secret_dense = nn.Sequential(nn.Linear(bits, 3 * self.low**2), nn.ReLU(inplace=True))
        c = channels + 3
        self.conv1, self.conv2 = conv(c, 32), conv(32, 32, 2)
        self.conv3, self.conv4, self.conv5 = conv(32, 64, 2), conv(64, 128, 2), conv(128, 256, 2)
        # Upsampling + a 2x2 conv on the way up, as the original (several ports use 3x3).
        self.up6, self.conv6 = conv(256, 128, kernel=2), conv(256, 128)
        self.up7, self.conv7 = conv(128, 64, kernel=2), conv(128, 64)
        self.up8, self.conv8 = conv(64, 32, kernel=2), conv(64, 32)
        self.up9, self.conv9 = conv(32, 32, kernel=2), conv(64 + c, 32)
        self.conv10 = conv(32, 32)
        self.residual = nn.Conv2d(32, channels, 1)

    def forward(self, images: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
        secret = self.secret_dense(codewords - 0.5).view(-1, 3, self.low, self.low)
        inputs = torch.cat([F.interpolate(secret, scale_factor=8.0), images - 0.5], dim=1)
        c1 = self.conv1(inputs)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        c5 = self.conv5(c4)
        up = lambda t: F.interpolate(t, scale_factor=2.0)  # noqa: E731
        c6 = self.conv6(torch.cat([c4, self.up6(up(c5))], dim=1))
        c7 = self.conv7(torch.cat([c3, self.up7(up(c6))], dim=1))
        c8 = self.conv8(torch.cat([c2, self.up8(up(c7))], dim=1))
        c9 = self.conv9(torch.cat([c1, self.up9(up(c8)), inputs], dim=1))
        return self.residual(self.conv10(c9))


class StegaStampDecoder(nn.Module):
    def __init__(self, image_size: int, channels: int = 3, bits: int = CODE_BITS) -> None:
        super().__init__()
        self.localization = nn.Sequential(
            conv(channels, 32, 2),
            conv(32, 64, 2),
            conv(64, 128, 2),
            nn.Flatten(),
            nn.Linear(128 * _side(image_size, 3) ** 2, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 6),
        )
        nn.init.zeros_(self.localization[-1].weight)  # the STN starts as the identity
        with torch.no_grad():
            self.localization[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.decoder = nn.Sequential(
            conv(channels, 32, 2),
            conv(32, 32),
            conv(32, 64, 2),
            conv(64, 64),
            conv(64, 64, 2),
            conv(64, 128, 2),
            conv(128, 128, 2),
            nn.Flatten(),
            nn.Linear(128 * _side(image_size, 5) ** 2, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, bits),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images - 0.5
        theta = self.localization(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return self.decoder(F.grid_sample(x, grid, align_corners=False))
