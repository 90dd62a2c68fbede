"""One registry type behind every extension point (classifiers, data sets, label strategies,
sample kinds, training pieces, objectives, attacks, schemes).

A registry maps names to objects, refuses a name registered twice, lists its names in
registration order, and answers an unknown name with the close matches. ``loader`` names the
module whose import registers the built-in entries, so that a registry asked from anywhere is full.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, loader: str | None = None) -> None:
        self.kind = kind  # "attack", "scheme"...: used in messages
        self.loader = loader
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
        if self.loader:
            importlib.import_module(self.loader)

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise ValueError(self.unknown_message(name))
        return self._entries[name]

    def check(self, names: str | list[str] | tuple[str, ...]) -> None:
        """Raise ValueError naming every unknown one of ``names`` (before any work starts)."""
        unknown = [n for n in ([names] if isinstance(names, str) else names) if n not in self]
        if unknown:
            raise ValueError("; ".join(self.unknown_message(n) for n in unknown))

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; {self.kind}s: {', '.join(self._entries)}"
