"""Figures of attack results: image rows (Fig. 5/6 style) and curves (Fig. 4/7/8 style)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_image_rows(
    rows: dict[str, torch.Tensor], path: str | Path, heat_rows: tuple[str, ...] = ()
) -> Path:
    """One row of images per entry (N, C, H, W in [0, 1]); rows in ``heat_rows`` use a colour
    map (Grad-CAM)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(images):
                continue
            img = images[c].detach().cpu()
            if title in heat_rows:
                ax.imshow(img[0].numpy(), cmap="jet", vmin=0, vmax=1)
            else:
                rgb = img.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
                ax.imshow(rgb, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_curve(result, path: str | Path) -> Path:
    """The curve of an AttackResult, with the baseline A_ad / A_ud as dashed lines."""
    curve, path = result.curve, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = curve["x_values"]
    positions = list(range(len(xs))) if curve.get("categorical") else xs
    for label, ys in curve["series"].items():
        ax.plot(positions, ys, marker="o", label=label)
    for key, style in (("A_ad", "--"), ("A_ud", ":")):
        if result.metrics.get(key) is not None:
            ax.axhline(
                result.metrics[key], color="grey", ls=style, lw=1, label=f"{key} (no attack)"
            )
    if curve.get("categorical"):
        ax.set_xticks(positions, xs, rotation=40, ha="right", fontsize=7)
    if curve.get("log_x"):
        ax.set_xscale("log")
    ax.set_xlabel(curve["x"])
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.set_title(result.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
