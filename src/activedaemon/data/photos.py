"""A small natural-photo data set that exists offline: square patches cut from six colour
photos that scikit-image ships, one class per photo, written as an image folder
(``OUT/train/<photo>/*.png``, ``OUT/val/<photo>/*.png``) for ``--dataset imagefolder:OUT``.

Training patches come from the left 75 % of each photo and test patches from the right 25 %, so
that a test patch never overlaps a training one (random patches of one photo overlap heavily;
a random split would measure memory, not generalisation). The same seed writes the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# scikit-image's colour photos (skimage.data function names); the class names of the folder.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field")
TRAIN_WIDTH = 0.75  # of each photo, left to right; the rest gives the test patches


def load_photos() -> dict[str, np.ndarray]:
    """The six photos (H x W x 3 uint8) by class name; they ship inside scikit-image."""
    try:
        import skimage.data as sk
    except ImportError as e:
        raise ImportError(
            "the photo data set cuts scikit-image's sample photos: pip install scikit-image "
            "(or pip install 'activedaemon[photos]')"
        ) from e
    return {
        name: sk.stereo_motorcycle()[0] if name == "motorcycle" else getattr(sk, name)()
        for name in PHOTOS
    }


def _patches(region: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """``n`` random square crops of ``region``, ``size`` pixels at the photo's own scale where
    the region is large enough, else the largest square that fits, resized (224 px from the
    300 px tall cat)."""
    h, w = region.shape[:2]
    side = min(size, h, w)
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        im = Image.fromarray(region[y : y + side, x : x + side])
        out.append(im if side == size else im.resize((size, size), Image.Resampling.BICUBIC))
    return out


def build_photo_folder(
    out: str | Path,
    size: int = 32,
    train_per_class: int = 1500,
    test_per_class: int = 300,
    seed: int = 0,
) -> Path:
    """Write the photo-patch image folder to ``out`` and return it. The defaults give 9,000
    training and 1,800 test images at 32 px; ``size=224`` works too (patches of the smaller
    photos are then upsampled)."""
    if size < 8 or train_per_class < 1 or test_per_class < 1:
        raise ValueError("size must be >= 8 and the per-class counts >= 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; pick a new folder")
    rng = np.random.default_rng(seed)
    for name, photo in load_photos().items():
        cut = int(photo.shape[1] * TRAIN_WIDTH)
        for split, region, n in (
            ("train", photo[:, :cut], train_per_class),
            ("val", photo[:, cut:], test_per_class),
        ):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(_patches(region, n, size, rng)):
                im.save(folder / f"{i:05d}.png")
    log.info("wrote %s: %d classes at %d px", out, len(PHOTOS), size)
    return out
