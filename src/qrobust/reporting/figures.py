"""Every figure of a report: the records grouped per trajectory and eval set, and for each group every
registered figure kind (:mod:`.registry`) in registration order.

The built-in kinds, in the order the report shows them: ``dq`` (ΔQ L along training, per variant), ``loss``,
``averaging`` (weight averaging vs LR decay, per variant), ``stable_vs_decay``, ``geometry``,
``layer_sharpness``, ``dq_vs_geometry`` (per variant) and ``tasks`` (per variant). File names are
deterministic (``<kind>_<trajectory>[_<eval set>][_<variant>].png``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

# the built-in figure kinds register themselves on import, in this order
from . import dq, loss, averaging, stable_vs_decay, geometry as geometry_kinds, tasks as task_kinds  # noqa: F401  isort: skip
from ..results.records import GeometryRecord, TaskRecord, VariantRecord
from ..results.records import geometry_records, task_records, variant_records
from .groups import Group, group_records, run_of, trajectory_of
from .registry import GroupInputs, figure_kinds
from .style import FigureOut, slug
from .variants import split_variants

__all__ = ["make_figures", "FigureOut", "slug"]

Records = Iterable[Any]  # typed records (what the store returns) or plain dicts of the same layout


def _mine(g: Group, recs: list[Any]) -> list[Any]:
    """Side records (geometry, tasks) of the group's trajectory and runs."""
    return [r for r in recs if trajectory_of(r) == g.traj and run_of(r) in g.runs]


def make_figures(records: Records, trajectories: Mapping[str, dict[str, Any]], out_dir: str | Path,
                 geometry: Records | None = None, tasks: Records | None = None,
                 kinds: set[str] | None = None) -> list[FigureOut]:
    """Write every figure for the given records (and loss-geometry and task records) into ``out_dir``;
    deterministic names, sorted order. ``kinds``: only these registered kinds (an unknown name is an error)."""
    chosen = figure_kinds(kinds)
    recs: list[VariantRecord] = variant_records(records)
    geos: list[GeometryRecord] = geometry_records(geometry or [])
    task_recs: list[TaskRecord] = task_records(tasks or [])
    figs: list[FigureOut] = []
    for g in group_records(recs, trajectories):
        inputs = GroupInputs(g, split_variants(g.recs), _mine(g, geos), _mine(g, task_recs), Path(out_dir))
        for kind in chosen:
            if kind.applies(inputs):
                figs += kind.draw(inputs)
    return figs
