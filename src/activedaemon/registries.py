"""One registry type behind every extension point (classifiers, data sets, label strategies,
sample kinds, training pieces, objectives, attacks, schemes).

A registry maps names to objects, refuses a name registered twice, lists its names in
registration order, and answers an unknown name with the close matches. ``loaders`` name the
packages whose import registers the entries, so that a registry asked from anywhere is full:
each such package imports its built-in modules in order, then every other module in its folder
(``import_submodules``), so a new attack, scheme, classifier or data set is one file dropped into
the package. Modules outside the package register too, imported by every registry's first
lookup: an installed distribution's entry points of the group ``activedaemon.plugins`` (the way
pytest and Pillow find their plugins; ``[project.entry-points."activedaemon.plugins"]`` in its
pyproject.toml, ``name = "module"``), and the modules named in ``$ACTIVEDAEMON_PLUGINS``
(comma-separated module names), in that order.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
PLUGINS_ENV = "ACTIVEDAEMON_PLUGINS"
PLUGINS_GROUP = "activedaemon.plugins"


def import_submodules(package: str) -> None:
    """Import every module of ``package``'s folder (name order; those already imported stay)."""
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def plugin_entry_points() -> list:
    """The installed entry points of the group ``activedaemon.plugins``, by name."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=PLUGINS_GROUP), key=lambda ep: ep.name)


def import_plugins() -> None:
    """Import the plugins: entry points first, then ``$ACTIVEDAEMON_PLUGINS`` (a module named by
    both is imported once). A plugin that fails to import is an error naming it."""
    for ep in plugin_entry_points():
        try:
            ep.load()
        except Exception as e:
            raise ImportError(
                f"activedaemon plugin {ep.name!r} ({ep.value}, entry point of "
                f"{getattr(ep.dist, 'name', 'an installed package')}) failed to import: {e}"
            ) from e
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(name)


class Registry(Generic[T]):
    def __init__(self, kind: str, loaders: tuple[str, ...] = ()) -> None:
        self.kind = kind  # "attack", "scheme"...: used in messages
        self.loaders = loaders
        self._loaded = False
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``@registry.register(name)`` on a function or class, or ``register(name, obj)``."""

        def add(item: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = item
            return item

        return add if obj is None else add(obj)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for package in self.loaders:
                importlib.import_module(package)
            import_plugins()

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:  # a lookup that hits needs no imports
            self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        if name not in self:
            raise ValueError(self.unknown_message(name))
        return self._entries[name]

    def check(self, names: str | list[str] | tuple[str, ...]) -> None:
        """Raise ValueError naming every unknown one of ``names`` (before any work starts)."""
        unknown = [n for n in ([names] if isinstance(names, str) else names) if n not in self]
        if unknown:
            raise ValueError("; ".join(self.unknown_message(n) for n in unknown))

    def unknown_message(self, name: str) -> str:
        self._load()
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; choose from: {', '.join(self._entries)}"
