"""Protection training (Algorithm 2), its pieces and the classifier zoo.

Importing the package imports nothing else: its names load on first use, so that a module that
needs only the checkpoints (``activedaemon.protect.checkpoint``) or the settings
(``activedaemon.protect.config``) does not pull in the trainer. The registries of this layer
fill themselves through ``activedaemon.protect.registered``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ProtectConfig": "activedaemon.protect.config",
    "load_preset": "activedaemon.protect.config",
    "resolve_config": "activedaemon.protect.config",
    "build_classifier": "activedaemon.protect.models",
    "list_classifiers": "activedaemon.protect.models",
    "register_classifier": "activedaemon.protect.models",
    "load_classifier": "activedaemon.protect.checkpoint",
    "load_protected": "activedaemon.protect.checkpoint",
    "train_classifier": "activedaemon.protect.train",
    "protect": "activedaemon.protect.train",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
