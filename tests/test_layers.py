"""Imports flow one way through the package's layers: a module imports only from its own
subpackage and from layers before it (the shared utilities first); no module imports another
that imports it back, even lazily; the registries' lazy loaders name their own layer; and the
trainer is imported by nothing outside protect/ (settings and checkpoints are their own
modules)."""

import ast
import importlib
from pathlib import Path

import activedaemon

ROOT = Path(activedaemon.__file__).parent
# Each top-level module or subpackage and its layer; the shared utilities are layer 0.
LAYERS = [
    ("identity", "imageio", "metrics", "runs", "registries", "cards"),
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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def type_checking_lines(tree: ast.AST) -> set[int]:
    """The lines of ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_edges(name: str) -> set[str]:
    """The activedaemon modules ``name`` imports anywhere (functions too; not for annotations
    only): ``from pkg import sub`` counts as pkg.sub where sub is a module."""
    tree = ast.parse(MODULES[name].read_text())
    skip, found = type_checking_lines(tree), set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_inside_a_package():
    """A package's __init__ may import its modules; otherwise no module imports one that imports
    it back (protect/start.py and protect/train.py used to)."""
    graph = {}
    for name in MODULES:
        edges = import_edges(name)
        package = name.rpartition(".")[0]
        # A module importing its own package's __init__ (to reach a re-exported name) is not a
        # cycle of modules; what the __init__ imports is checked on its own.
        graph[name] = {m for m in edges if not (m == package and MODULES[m].name == "__init__.py")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_nothing_outside_protect_imports_the_trainer():
    importers = [
        name
        for name in MODULES
        if not name.startswith("activedaemon.protect")
        and "activedaemon.protect.train" in import_edges(name)
    ]
    assert importers == []


def registries_in_source():
    """(module, variable, loader packages) of every Registry(...) built at module level."""
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            value = getattr(node, "value", None)
            target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
            if (
                isinstance(value, ast.Call)
                and getattr(value.func, "id", None) == "Registry"
                and len(value.args) == 2
            ):
                loaders = [elt.value for elt in value.args[1].elts]
                yield name, target.id, loaders


def test_registry_loaders_name_their_own_layer_and_fill_the_registry():
    """A registry's lazy loader is a module of its own subpackage (the classifier registry used
    to import activedaemon.schemes from the protect layer), and importing it fills the
    registry."""
    found = list(registries_in_source())
    assert len(found) >= 9
    for module, variable, loaders in found:
        mine = module.split(".")[1]
        assert loaders, f"{module}.{variable} has no loader"
        for loader in loaders:
            assert loader in MODULES, f"{module}.{variable}: no module {loader}"
            assert loader.split(".")[1] == mine, f"{module}.{variable} loads {loader}"
        registry = getattr(importlib.import_module(module), variable)
        assert registry.names(), f"{module}.{variable} is empty after its loaders ran"


MAX_FUNCTION_LINES = 120
# Argument tables: one add_argument call after another, long by nature and flat.
ARGUMENT_TABLES = {"add_parsers"}


def test_no_function_is_longer_than_a_screenful_or_two():
    """A function over ~120 lines does several things (the console used to be one 381-line
    closure); argument tables are exempt."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and node.name not in ARGUMENT_TABLES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []
