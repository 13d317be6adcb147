"""Figure kinds by name, through one registry (the pattern of :func:`qrobust.data.corpus.register_source`).

A figure kind is a function that draws zero or more figures for one :class:`GroupInputs` (a trajectory and
eval set: its records split by variant, and the geometry and task records of its runs). Adding a kind is one
new module with one registration::

    @register_figure("my_view", needs=("geometry",))
    def my_view(inputs: GroupInputs) -> list[FigureOut]: ...

and importing that module before the report is written. The report draws the kinds in registration order,
skipping a kind when a record kind it ``needs`` is absent for the group.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..registries import Registry
from ..errors import QrobustError
from ..results.records import GeometryRecord, TaskRecord
from .groups import Group
from .style import FigureOut, slug
from .variants import Variant

RECORD_KINDS = ("records", "geometry", "tasks")


class FigureKindError(QrobustError):
    """An unknown figure kind was asked for, or a kind was registered with an unknown record need."""


@dataclass(frozen=True)
class GroupInputs:
    """What a figure kind draws from: one group, its variants, the side records of its runs, where to write."""
    group: Group
    variants: list[Variant]
    geometry: list[GeometryRecord]
    tasks: list[TaskRecord]
    out_dir: Path

    def path(self, kind: str, variant: Variant | None = None) -> Path:
        """``<kind>_<trajectory><eval-set suffix>[_<variant>].png``: the figure file names reports have always had."""
        g = self.group
        tail = f"_{variant.name}" if variant is not None else ""
        return self.out_dir / f"{kind}_{slug(g.traj)}{g.suffix}{tail}.png"


Draw = Callable[[GroupInputs], list[FigureOut]]


@dataclass(frozen=True)
class FigureKind:
    name: str
    draw: Draw
    needs: tuple[str, ...]  # record kinds that must be present for the group (RECORD_KINDS)

    def applies(self, inputs: GroupInputs) -> bool:
        have = {"records": bool(inputs.variants), "geometry": bool(inputs.geometry), "tasks": bool(inputs.tasks)}
        return all(have[n] for n in self.needs)


FIGURE_KINDS: Registry[FigureKind] = Registry("figure kind", FigureKindError)


def register_figure(name: str, needs: tuple[str, ...] = ("records",)) -> Callable[[Draw], Draw]:
    """Register ``fn`` as the figure kind ``name``; ``needs``: the record kinds it draws from."""
    unknown = [n for n in needs if n not in RECORD_KINDS]
    if unknown:
        raise FigureKindError(f"figure kind '{name}' needs unknown record kind(s) {', '.join(unknown)}; "
                              f"known: {', '.join(RECORD_KINDS)}")

    return FIGURE_KINDS.register(name, lambda fn: FigureKind(name, fn, tuple(needs)))  # type: ignore


def figure_kinds(names: set[str] | None = None) -> list[FigureKind]:
    """The registered kinds in registration order (only ``names`` when given; an unknown name is an error)."""
    if names is None:
        return list(FIGURE_KINDS.values())
    unknown = sorted(set(names) - set(FIGURE_KINDS))
    if unknown:
        raise FigureKindError(f"unknown figure kind '{unknown[0]}'; known: {', '.join(sorted(FIGURE_KINDS))}")
    return [k for k in FIGURE_KINDS.values() if k.name in names]
