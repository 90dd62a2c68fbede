"""A new compared scheme in one file: a visible one-pixel grey border as the (shared) key.

Drop this file into ``src/activedaemon/schemes/`` (or name its module in
``$ACTIVEDAEMON_PLUGINS``) and ``activedaemon compare --schemes activedaemon,border`` trains and
measures it beside the others; attacks it cannot take (it has no token decoder) are skipped with
the reason they give.
"""

from __future__ import annotations

import torch

from activedaemon.schemes.base import register_scheme
from activedaemon.schemes.patches import PatchMaker, PatchScheme


@register_scheme("border")
class Border(PatchScheme):
    """Authorized images carry a grey border one pixel wide; the poisoned-set training of
    Algorithm 2 (shared with M-LOCK and ADIP) teaches the model to answer only those."""

    def __init__(self, grey: float = 0.5, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        mask = torch.ones(1, 1, image_size, image_size)
        mask[..., 1:-1, 1:-1] = 0
        self.maker = PatchMaker(torch.full((1, channels, 1, 1), grey), mask, alpha=1.0)
