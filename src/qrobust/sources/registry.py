"""Trajectory sources by spec string, through a registry (kind -> loader), like corpora in ``data/corpus.py``.

A spec ``KIND:TARGET`` whose KIND is registered goes to that loader; anything else is a path, recognised
by its shape (``folders`` when it holds glob characters and is not an existing path, else ``local``: a
run folder with a manifest or one checkpoint folder). An optional selection suffix ``?every=N``,
``?steps=A,B``, ``?max=N``, ``?run=NAME`` (joined by &) picks checkpoints (``selection.py``). Adding a
kind is one module with one ``@register_source("kind")`` function, imported by ``sources/__init__.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..registries import Registry
from ..errors import ConfigError
from ..trajectory import Trajectory
from .selection import parse_query, select

GLOB_CHARS = "*?["
LOCAL = "local"  # the kind of a bare path (no registered prefix)


@dataclass(frozen=True)
class SourceSpec:
    """One parsed source: its kind, what follows ``KIND:`` (or the path), and the folder step regex."""

    kind: str
    target: str
    step_pattern: str | None = None


Loader = Callable[[SourceSpec], Trajectory]
SOURCES: Registry[Loader] = Registry("trajectory source kind")
register_source = SOURCES.register


def _prefixed_kind(text: str) -> str | None:
    kind, sep, _ = text.partition(":")
    return kind if sep and kind in SOURCES and kind != LOCAL else None


def _split_query(text: str) -> tuple[str, str]:
    """(spec, selection query): the query of a prefixed spec, or of a local folder whose name has no '?'."""
    head, _, tail = text.partition("?")
    if _prefixed_kind(text) or (tail and not Path(text).exists() and Path(head).exists()):
        return head, tail
    return text, ""


def parse_source(base: str, step_pattern: str | None = None) -> SourceSpec:
    """The kind of a spec (query removed); ``KIND:`` with an unregistered KIND is one error naming the known
    kinds, unless the whole spec is an existing path."""
    kind = _prefixed_kind(base)
    if kind is not None:
        return SourceSpec(kind, base[len(kind) + 1:], step_pattern)
    head, sep, _ = base.partition(":")
    if sep and re.fullmatch(r"[A-Za-z][\w-]+", head) and not Path(base).exists():
        known = ", ".join(sorted(k for k in SOURCES if k != LOCAL))
        raise ConfigError(f"unknown trajectory source kind '{head}'; known: {known} (or a path)")
    if any(c in base for c in GLOB_CHARS) and not Path(base).exists():
        return SourceSpec("folders", base, step_pattern)
    return SourceSpec(LOCAL, base, step_pattern)


def load_source(spec: str | Path | dict[str, Any]) -> Trajectory:
    """Resolve a source spec (string, path, or ``{source: ..., step_pattern: ..., every: ...}``)."""
    opts: dict[str, Any] = {}
    if isinstance(spec, dict):
        opts = dict(spec)
        if "source" not in opts:
            raise ConfigError("a trajectory given as a mapping needs 'source' (e.g. {source: 'preset:pythia-160m'})")
        spec = opts.pop("source")
    text = str(spec)
    base, query = _split_query(text)
    opts.update(parse_query(query))
    parsed = parse_source(base, opts.pop("step_pattern", None))
    traj = SOURCES[parsed.kind](parsed)
    traj.source = text
    return select(traj, **opts)
