"""Image files <-> float tensors in [0, 1], (C, H, W), with clear errors for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> 8-bit values, as an image file stores them."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def to_uint8_rows(images: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``to_uint8`` a block of ``rows`` images at a time: the same values without the float
    temporaries of the whole set (a read-only view, as of grey images made RGB, is fine)."""
    out = torch.empty(images.shape, dtype=torch.uint8)
    for i in range(0, len(images), rows):
        out[i : i + rows] = to_uint8(images[i : i + rows])
    return out


def take_rows(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``images[idx]``, keeping a channel that is a view of one grey channel (stride 0) a view:
    a third of the memory of the copy."""
    if images.ndim == 4 and images.shape[1] > 1 and images.stride(1) == 0:
        return images[:, :1][idx].expand(-1, images.shape[1], -1, -1)
    return images[idx]


def round_8bit(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats rounded to the 256 levels of an 8-bit image (still float)."""
    return (images.clamp(0, 1) * 255).round() / 255


def round_8bit_(images: torch.Tensor) -> torch.Tensor:
    """``round_8bit`` in place (the same values, no temporaries)."""
    return images.clamp_(0, 1).mul_(255).round_().div_(255)


def jpeg_round_trip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Each (C, H, W) image in [0, 1] through a real JPEG encode / decode (Pillow) at
    ``quality``, as an upload or a messenger would; returns [0, 1] floats on the same device."""
    out = []
    for img in to_uint8(images.detach()).cpu():
        mode = "L" if img.shape[0] == 1 else "RGB"
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy(), mode).save(
            buf, "JPEG", quality=quality
        )
        arr = torch.from_numpy(np.array(Image.open(buf).convert(mode)))
        out.append(arr.view(img.shape[1], img.shape[2], -1).permute(2, 0, 1))
    return (torch.stack(out).float() / 255).to(images.device, images.dtype)


def read_image(
    source: str | Path | bytes, channels: int, size: int | None = None, resize: bool = False
) -> torch.Tensor:
    """Read a PNG / JPEG / ... as a (channels, H, W) float tensor in [0, 1].

    With ``size``, the image must be size x size unless ``resize`` is set (bilinear resize).
    """
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name} is not a readable image: {e}") from e
    if size is not None and im.size != (size, size):
        if not resize:
            raise ValueError(
                f"{name} is {im.size[0]}x{im.size[1]}; the encoder works at {size}x{size} "
                "(pass --resize to resize it)"
            )
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(im, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a (C, H, W) tensor in [0, 1] as an 8-bit PNG (lossless, so tokens survive)."""
    array = to_uint8(image.detach()).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
    return path
