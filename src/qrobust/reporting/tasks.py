"""Downstream accuracy beside ΔQ L: mean task accuracy of the FP and quantized models along training."""
from __future__ import annotations

from typing import Any, Mapping

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from ..results.records import TaskRecord
from .dq import dq_rel
from .groups import run_label, run_of, series
from .registry import GroupInputs, register_figure
from .style import DQ_LABEL, FigureOut, legend_below, save_figure, style_x
from .variants import Variant


def mean_accuracy(scores: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean ``acc`` over the tasks that report one; None when none does."""
    vals = [s.get("acc") for s in scores.values()]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def acc_fp(t: TaskRecord) -> float | None:
    return mean_accuracy(t.fp)


def acc_q(t: TaskRecord) -> float | None:
    return mean_accuracy(t.q)


@register_figure("tasks", needs=("records", "tasks"))
def task_figures(inputs: GroupInputs) -> list[FigureOut]:
    figs = [tasks_figure(inputs, v) for v in inputs.variants]
    return [f for f in figs if f is not None]


def _legend(ax: Any, inputs: GroupInputs, mine: list[TaskRecord], label: str) -> None:
    g = inputs.group
    runs = [r for r in g.order if any(run_of(x) == r for x in mine)]
    handles = [Line2D([], [], color=g.colours[r], lw=2.5, label=run_label(g, r)) for r in runs]
    handles += [Line2D([], [], color="0.2", marker="o", label="FP (solid)"),
                Line2D([], [], color="0.2", ls="--", marker="s", label=f"{label} (dashed)")]
    legend_below(ax, handles)


def tasks_figure(inputs: GroupInputs, variant: Variant) -> FigureOut | None:
    g, label, path = inputs.group, variant.label, inputs.path("tasks", variant)
    mine = [t for t in inputs.tasks if t.variant.label == variant.recs[0].variant.label]
    if not mine:
        return None
    fig = Figure(figsize=(12, 4.4))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"wspace": 0.28})
    for run, pts in series(g, mine, acc_fp).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3.5, lw=1.6, color=g.colours[run])
    for run, pts in series(g, mine, acc_q).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--s", ms=3.5, lw=1.2, color=g.colours[run], alpha=0.85)
    for run, pts in series(g, variant.recs, dq_rel).items():
        bx.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3.5, lw=1.6, color=g.colours[run])
    names = sorted({t for r in mine for t in r.fp})
    ax.set_ylabel(f"mean accuracy over {len(names)} task(s)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    bx.set_ylabel(DQ_LABEL)
    bx.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    for a in (ax, bx):
        style_x(a, g.use_tokens)
    _legend(ax, inputs, mine, label)
    title = f"{g.traj}: downstream accuracy and ΔQ L, {label}"
    fig.suptitle(title, fontsize=11)
    caption = (f"Left: mean accuracy over {', '.join(names)} of the FP (solid) and {label} (dashed) models along "
               f"'{g.traj}'; right: ΔQ L of the same checkpoints.")
    return FigureOut(path, "tasks", g.traj, title, caption, g.xaxis, save_figure(fig, path))
