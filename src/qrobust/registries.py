"""The one registry pattern: a name -> implementation mapping with a decorator that fills it and a lookup
whose unknown name is one error line listing the known ones.

Every choice in qrobust is a ``Registry``: quantizers, grids, AWQ layouts, corpus and trajectory sources,
averagers, task kinds, record migrations, executors, figure kinds and verdict kinds. Adding one is one new
module and one ``@REGISTRY.register("name")`` (or the module's named decorator built on it), never an edit
to a chain of ``if``s.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from .errors import ConfigError, QrobustError

T = TypeVar("T")


class Registry(dict[str, T]):
    """``name -> T`` in registration order. ``what`` names an entry in messages ("executor", "averager")."""

    def __init__(self, what: str, error: type[QrobustError] = ConfigError) -> None:
        super().__init__()
        self.what, self.error = what, error

    def register(self, name: str, make: Callable[[T], T] | None = None) -> Callable[[T], T]:
        """Decorator storing the decorated object under ``name`` (``make(obj)`` instead, when given) and
        returning the object itself unchanged."""
        def deco(obj: T) -> T:
            self[name] = obj if make is None else make(obj)
            return obj
        return deco

    def known(self) -> str:
        return ", ".join(sorted(self))

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is one error line listing the known ones."""
        if name not in self:
            raise self.error(f"unknown {self.what} '{name}'; known: {self.known()}")
        return self[name]
