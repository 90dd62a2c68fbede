"""Importing this module registers every classifier, training piece, objective, label strategy,
sample kind and augmentation of the protect layer: the built-in modules in order, then every
other module of the folder (a new one dropped in registers itself). The registries of this layer
name it as their loader."""

# isort: off
from activedaemon.protect import models, objectives, poison, pieces, stream  # noqa: F401
from activedaemon.protect import adversarial, dormancy  # noqa: F401  (the pieces, in order)

# isort: on
from activedaemon.registries import import_submodules  # noqa: E402

import_submodules("activedaemon.protect")
