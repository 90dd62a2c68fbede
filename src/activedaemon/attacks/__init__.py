"""The attack suite: every attack of the paper plus adaptive ones, behind one interface.

from activedaemon.attacks import AttackContext, run_attack, list_attacks
result = run_attack("reverse", AttackContext(model, encoder, data))
"""

# Import order is the suite's order: the paper's attacks, then the ones beyond it.
# isort: off
from activedaemon.attacks import fake_tokens  # noqa: F401  gaussian, deteriorated, mismatched
from activedaemon.attacks import reverse, stolen, extraction, finetune  # noqa: F401
from activedaemon.attacks import pruning, gradcam, transit  # noqa: F401
from activedaemon.attacks import dormancy, wake  # noqa: F401  thieves without a token

# isort: on
from activedaemon.attacks.base import (
    ATTACKS,
    NEEDS,
    AttackContext,
    AttackResult,
    list_attacks,
    not_applicable,
    register_attack,
    run_attack,
    threat_model,
)
from activedaemon.registries import import_submodules

__all__ = [
    "ATTACKS",
    "NEEDS",
    "not_applicable",
    "AttackContext",
    "AttackResult",
    "list_attacks",
    "register_attack",
    "run_attack",
    "threat_model",
]

import_submodules(__name__)  # a new module dropped into this folder registers itself
