"""Imports flow one way through the package's layers: a module imports only from its own
subpackage and from layers before it (the shared utilities first)."""

import ast
from pathlib import Path

import activedaemon

ROOT = Path(activedaemon.__file__).parent
# Each top-level module or subpackage and its layer; the shared utilities are layer 0.
LAYERS = [
    ("identity", "imageio", "metrics", "runs", "registries"),
    ("data",),
    ("tokens",),
    ("protect",),
    ("evaluate",),
    ("attacks",),
    ("schemes",),
    ("serve",),
    ("client", "demo"),
    ("cli", "__init__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def imported_parts(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_imports_flow_one_way():
    backwards = []
    for path in ROOT.rglob("*.py"):
        me = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for module in imported_parts(ast.parse(path.read_text())):
            parts = module.split(".")
            if parts[0] != "activedaemon" or len(parts) < 2 or parts[1] == me:
                continue
            theirs, mine = LAYER[parts[1]], LAYER[me]
            if theirs >= mine and not theirs == mine == 0:  # utilities may use each other
                backwards.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not backwards, backwards
