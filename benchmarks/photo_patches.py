"""An image folder of natural-photo patches, a second encoder data set for Table IX offline.

    python benchmarks/photo_patches.py OUT [--size 32] [--train 4000] [--val 500] [--seed 0]

Random square crops (one sixteenth to one half of the shorter side) of scikit-image's seven
colour sample photos (astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry,
retina, rocket), resized to SIZE and written as OUT/train/photo/*.png and OUT/val/photo/*.png:
``--dataset imagefolder:OUT``. Needs scikit-image (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
    "rocket",
)  # fmt: skip


def write_patches(out: Path, size: int, counts: dict[str, int], seed: int) -> None:
    import skimage.data

    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        folder = out / split / "photo"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            photo = photos[rng.integers(len(photos))]
            short = min(photo.size)
            side = int(rng.integers(short // 16, short // 2 + 1))
            left = int(rng.integers(photo.size[0] - side + 1))
            top = int(rng.integers(photo.size[1] - side + 1))
            patch = photo.crop((left, top, left + side, top + side))
            patch.resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_patches(args.out, args.size, {"train": args.train, "val": args.val}, args.seed)
    print(f"written to {args.out}: use --dataset imagefolder:{args.out}")


if __name__ == "__main__":
    main()
