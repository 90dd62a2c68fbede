"""Token generator networks (paper Sec. III-B1): U-Net encoder, bit decoder, WGAN critic.

All take images in [0, 1], NCHW, of any size that is a multiple of 4 (28, 32, 64, 224...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from activedaemon.identity import CODE_BITS


@dataclass(frozen=True)
class ArchConfig:
    """Architecture arguments, stored in a checkpoint's card."""

    image_size: int = 32
    channels: int = 3
    base: int = 16  # encoder width at full resolution
    secret_channels: int = 8  # channels of the low-resolution secret map
    decoder_width: int = 32
    decoder_hidden: int = 512
    # Side of the secret map (None: image_size / 4, the shipped encoders). The paper's 224 px
    # design is a 64 x 64 x 3 map: the dense layer then holds 1.6 M weights instead of 3.2 M.
    secret_size: int | None = None
    # Stride of the decoder's first conv (1: the shipped encoders). 2 halves the resolution the
    # decoder works at: at 224 px the full-resolution first layers were most of its time.
    decoder_stride: int = 1
    # Perceptual mask (None = off, the shipped fashion-mnist-32 encoder): the residual is bounded
    # by max_residual * tanh and scaled per pixel by mask_floor + (1 - mask_floor) * texture,
    # texture = min(1, local std / mask_ref). Flat regions (FMNIST's black background, where
    # SSIM punishes any change and clamping eats half the residual) get at most mask_floor of it.
    max_residual: float | None = None
    mask_floor: float = 1.0
    mask_ref: float = 0.1

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.secret_size is not None and not 1 <= self.secret_size <= self.image_size:
            raise ValueError(f"secret_size must be in [1, image_size], got {self.secret_size}")
        if self.decoder_stride not in (1, 2):
            raise ValueError(f"decoder_stride must be 1 or 2, got {self.decoder_stride}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 < self.mask_floor <= 1 or self.mask_ref <= 0:
            raise ValueError("mask_floor must be in (0, 1] and mask_ref > 0")
        if self.max_residual is not None and self.max_residual <= 0:
            raise ValueError(f"max_residual must be > 0 or None, got {self.max_residual}")

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # BatchNorm matters: without it the bit accuracy of this family stalls (REFERENCE.md).
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Up(nn.Module):
    """2x2 stride-2 up-convolution, concatenation with the skip, then a 3x3 conv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        self.conv = conv_bn(c_out + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Encoder(nn.Module):
    """G_e(x, s): image and 127-bit codeword -> residual (the token), same shape as the image.

    The codeword goes through a dense layer to a (secret_channels, secret_size, secret_size) map
    that is nearest-upsampled to the image size and concatenated with the image, as in the paper.
    """

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.low = cfg.secret_size or cfg.image_size // 4
        b, cs = cfg.base, cfg.secret_channels
        self.secret_dense = nn.Linear(CODE_BITS, cs * self.low * self.low)
        self.secret_up = nn.Upsample(size=cfg.image_size, mode="nearest")
        self.inc = nn.Sequential(conv_bn(cfg.channels + cs, b), conv_bn(b, b))
        self.down1 = nn.Sequential(conv_bn(b, 2 * b, stride=2), conv_bn(2 * b, 2 * b))
        self.down2 = nn.Sequential(conv_bn(2 * b, 4 * b, stride=2), conv_bn(4 * b, 4 * b))
        self.up1 = Up(4 * b, 2 * b, 2 * b)
        self.up2 = Up(2 * b, b, b)
        self.out = nn.Conv2d(b + cfg.channels, cfg.channels, 1)

    def forward(self, images: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
        secret = self.secret_dense(codewords - 0.5)
        secret = secret.view(-1, self.cfg.secret_channels, self.low, self.low)
        x = images - 0.5
        x1 = self.inc(torch.cat([x, self.secret_up(secret)], dim=1))
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        y = self.up2(self.up1(x3, x2), x1)
        residual = self.out(torch.cat([y, x], dim=1))
        if self.cfg.max_residual is not None:
            residual = self.cfg.max_residual * torch.tanh(residual) * texture_mask(images, self.cfg)
        return residual


def texture_mask(images: torch.Tensor, cfg: ArchConfig) -> torch.Tensor:
    """(N, 1, H, W) in [mask_floor, 1]: 1 where the 5x5 neighbourhood varies by mask_ref or more."""
    grey = images.mean(dim=1, keepdim=True)
    mean = nn.functional.avg_pool2d(grey, 5, 1, 2, count_include_pad=False)
    sq_mean = nn.functional.avg_pool2d(grey * grey, 5, 1, 2, count_include_pad=False)
    std = (sq_mean - mean * mean).clamp(min=0).add(1e-8).sqrt()
    texture = (std / cfg.mask_ref).clamp(max=1.0)
    return cfg.mask_floor + (1 - cfg.mask_floor) * texture


class Decoder(nn.Module):
    """Image -> 127 logits (sigmoid gives bit probabilities)."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        w = cfg.decoder_width
        self.features = nn.Sequential(
            conv_bn(cfg.channels, w, stride=cfg.decoder_stride),
            conv_bn(w, w, stride=2),
            conv_bn(w, 2 * w),
            conv_bn(2 * w, 2 * w, stride=2),
            conv_bn(2 * w, 2 * w),
            conv_bn(2 * w, 2 * w, stride=2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 16, cfg.decoder_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.decoder_hidden, CODE_BITS),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images - 0.5))


class Critic(nn.Module):
    """WGAN critic: image -> unbounded score (higher = looks more like a clean image)."""

    def __init__(self, cfg: ArchConfig, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, width, 3, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * width, 1, 3, 1, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images - 0.5).squeeze(1)
