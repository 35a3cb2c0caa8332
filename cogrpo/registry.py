"""A small generic registry with lazy imports, used for model backends, rewards and benchmarks.

Entries are registered as ``"package.module:attribute"`` strings, so heavy
dependencies (open_clip, BLIP weights, detectors) are imported only when an
entry is used. Unknown names fail with the closest matches and the full list.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class UnknownEntryError(KeyError):
    """A name that no registry entry or alias matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One registered object: where it lives and what it is."""

    name: str
    target: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """Import and return the registered object."""
        module_name, _, attribute = self.target.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise ImportError(f"registry entry {self.name!r} points at {self.target!r}, which does not exist") from None


class Registry:
    """Named entries of one kind (``"reward"``, ``"model"``, ``"benchmark"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, target: str, *, description: str = "", aliases: tuple[str, ...] = (), **info: Any) -> Entry:
        """Add an entry; ``target`` is ``"module:attribute"``."""
        if ":" not in target:
            raise ValueError(f"target {target!r} must look like 'package.module:attribute'")
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        entry = Entry(name=name, target=target, description=description, aliases=tuple(aliases), info=dict(info))
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def entry(self, name: str) -> Entry:
        """Return the entry called ``name`` (or one of its aliases)."""
        key = self._aliases.get(name, name)
        if key in self._entries:
            return self._entries[key]
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownEntryError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        """Import and return the object registered as ``name``."""
        return self.entry(name).load()

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the registered class or factory ``name`` with the given arguments."""
        factory: Callable[..., Any] = self.get(name)
        return factory(*args, **kwargs)

    def names(self) -> list[str]:
        """Return the registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())
