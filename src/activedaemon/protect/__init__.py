"""Protection training (Algorithm 2), its pieces and the classifier zoo."""

# isort: off
from activedaemon.protect.models import build_classifier, list_classifiers, register_classifier
from activedaemon.protect.train import ProtectConfig, load_classifier, train_classifier
from activedaemon.protect import adversarial, dormancy  # noqa: F401  (registers the pieces)

# isort: on
from activedaemon.registries import import_submodules  # noqa: E402

import_submodules(__name__)  # a new module dropped into this folder registers itself

__all__ = [
    "ProtectConfig",
    "build_classifier",
    "list_classifiers",
    "load_classifier",
    "register_classifier",
    "train_classifier",
]
