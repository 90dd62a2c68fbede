"""ActiveDaemon: image classifiers that answer only queries carrying a user-specific token."""

import importlib

__version__ = "0.1.0"
# Imported on first use, so that `activedaemon --help` and light tools do not load torch.
_LAZY = {
    "IdentityCodec": "activedaemon.identity",
    "random_user_id": "activedaemon.identity",
    "TokenGenerator": "activedaemon.tokens",
    "load_classifier": "activedaemon.protect.checkpoint",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'activedaemon' has no attribute {name!r}")
