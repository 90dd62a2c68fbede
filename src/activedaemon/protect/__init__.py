"""Protection training (Algorithm 2) and the classifier zoo."""

from activedaemon.protect.models import build_classifier, list_classifiers, register_classifier
from activedaemon.protect.train import ProtectConfig, load_classifier, train_classifier

__all__ = [
    "ProtectConfig",
    "build_classifier",
    "list_classifiers",
    "load_classifier",
    "register_classifier",
    "train_classifier",
]
