"""Fig. 9-style sample grid: clean | authorized | amplified token, for three user ids."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from activedaemon.identity import random_user_id
from activedaemon.tokens.generator import TokenGenerator


def save_sample_grid(
    gen: TokenGenerator,
    images: torch.Tensor,
    path: str | Path,
    user_ids: list[str] | None = None,
    seed: int = 0,
    amplify: float = 10.0,
) -> Path:
    """Rows: images. Columns: clean, then per id: authorized and |token| x ``amplify``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(seed)
    user_ids = user_ids or [random_user_id(rng, a) for a in ("alnum", "ascii", "alnum")]
    columns = [("clean", images)]
    for uid in user_ids:
        authorized = gen.embed(images, uid)
        columns.append((f"{uid}\nauthorized", authorized))
        columns.append((f"{uid}\ntoken x{amplify:g}", ((authorized - images) * amplify + 0.5)))
    rows, cols = len(images), len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for c, (title, batch) in enumerate(columns):
        for r in range(rows):
            ax = axes[r][c]
            im = batch[r].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(im.squeeze(-1) if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
