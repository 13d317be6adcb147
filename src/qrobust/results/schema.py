"""The record schema: which JSON layouts this qrobust reads, and how an older one is lifted to today's.

``SCHEMA`` is what this code writes. ``MIGRATIONS`` maps every schema it still reads to a function that lifts
such a dict to today's layout; adding a layout change is one new schema version plus one registered
migration for the previous one. Version 1 is today's: the layout did not change when records became typed,
so record keys and files stay byte-identical.
"""
from __future__ import annotations

from typing import Any, Callable

from ..registries import Registry
from ..errors import QrobustError

SCHEMA_PREFIX = "qrobust.record/"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_PREFIX}{SCHEMA_VERSION}"
Lift = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: Registry[Lift] = Registry("record schema")


class RecordError(QrobustError, ValueError):
    """A stored dict is not a record of the kind asked for (the message says why)."""


def register_migration(schema: str) -> Callable[[Lift], Lift]:
    """Register the function lifting a record dict of an older ``schema`` to today's layout (one per schema)."""
    return MIGRATIONS.register(schema)


@register_migration(SCHEMA)
def _today(d: dict[str, Any]) -> dict[str, Any]:
    return d


def schema_problem(schema: Any) -> str | None:
    """Why a dict whose ``schema`` field is this cannot be read; None when a registered migration reads it."""
    if isinstance(schema, str) and schema in MIGRATIONS:
        return None
    ours = isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX)
    version = schema[len(SCHEMA_PREFIX):] if ours else ""
    if version.isdigit() and int(version) > SCHEMA_VERSION:
        return f"written by a newer qrobust (schema '{schema}'; this one reads up to '{SCHEMA}'): upgrade qrobust"
    if ours:
        return f"has schema '{schema}', which no migration reads (known: {', '.join(sorted(MIGRATIONS))})"
    return f"has no '{SCHEMA}' schema"


def lift(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` in today's layout (RecordError when its schema is not one this qrobust reads)."""
    why = schema_problem(d.get("schema"))
    if why is not None:
        raise RecordError(why)
    return MIGRATIONS[d["schema"]](d)
