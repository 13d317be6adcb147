"""ΔQ L along training, one figure per variant: a line per run, cooldown branches forking off the main run,
interval bars, the LR schedules faint on a right axis and the decay phases shaded."""
from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from .groups import Group, run_label, series
from .overlays import draw_lr, interval_bars, shade_decay
from .registry import GroupInputs, register_figure
from .style import DQ_LABEL, FigureOut, legend_below, save_figure, style_x
from .variants import Variant


def dq_rel(rec: Any) -> Any:
    return rec.metrics.dq_rel


@register_figure("dq")
def dq_figures(inputs: GroupInputs) -> list[FigureOut]:
    return [dq_figure(inputs, v) for v in inputs.variants]


def dq_figure(inputs: GroupInputs, variant: Variant) -> FigureOut:
    g, label, path = inputs.group, variant.label, inputs.path("dq", variant)
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot()
    lines = series(g, variant.recs, dq_rel)
    handles: list[Any] = []
    for run, pts in lines.items():
        (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1.6,
                       color=g.colours[run], label=run_label(g, run), zorder=3)
        handles.append(h)
    bars = interval_bars(ax, g, variant.recs)
    handles += draw_lr(ax, g, list(lines)) + shade_decay(ax, g, list(lines))
    style_x(ax, g.use_tokens)
    ax.set_ylabel(DQ_LABEL)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    title = f"{g.traj}: quantization degradation, {label}"
    ax.set_title(title, fontsize=11)
    legend_below(ax, handles)
    return FigureOut(path, "dq", g.traj, title, _caption(g, label, bars), g.xaxis, save_figure(fig, path))


def _caption(g: Group, label: str, bars: bool) -> str:
    return (f"Relative loss increase from quantization ({label}) along the training trajectory '{g.traj}'; "
            "one line per run, cooldown branches fork off the main run; faint lines: LR schedule; "
            "shaded: LR decay phases" + ("; bars: paired-bootstrap 95 % intervals over evaluation blocks." if bars
                                         else "."))
