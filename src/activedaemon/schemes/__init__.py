"""ActiveDaemon and the compared schemes (M-LOCK, ADIP, DeepIPR passports, ChaoW) behind one
interface, and the harness that measures them side by side.

from activedaemon.schemes import create_scheme, list_schemes
scheme = create_scheme("mlock", size=4)
run = scheme.train(cfg, "runs/mlock")
"""

# isort: off
from activedaemon.schemes.base import (
    SCHEMES,
    Scheme,
    create_scheme,
    list_schemes,
    register_scheme,
)
from activedaemon.schemes import activedaemon, patches, passport, chaow  # noqa: F401

# isort: on
from activedaemon.registries import import_submodules  # noqa: E402

import_submodules(__name__)  # a new module dropped into this folder registers itself

__all__ = ["SCHEMES", "Scheme", "create_scheme", "list_schemes", "register_scheme"]
