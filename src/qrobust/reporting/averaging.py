"""The paper's F4 view: weight averaging against LR decay, FP loss, quantized loss and ΔQ L side by side
(drawn only for groups that have an averaged run)."""
from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from .dq import dq_rel
from .groups import Group, is_averaged, run_label, series
from .loss import loss_fp, loss_q
from .overlays import interval_bars, shade_decay
from .registry import GroupInputs, register_figure
from .style import DQ_LABEL, FigureOut, save_figure, style_x
from .variants import Variant


def _zoom_late(ax: Any, lines: dict[str, list[tuple[float, float]]]) -> None:
    """Fit y to the last two thirds of training: early losses (5+ nats) would flatten the differences
    between averaging and decay that the figure is about; earlier points run off the top."""
    xs = [x for pts in lines.values() for x, _ in pts]
    if not xs:
        return
    cut = min(xs) + (max(xs) - min(xs)) / 3
    ys = [y for pts in lines.values() for x, y in pts if x >= cut]
    if len(ys) >= 2 and max(ys) > min(ys):
        pad = 0.08 * (max(ys) - min(ys))
        ax.set_ylim(min(ys) - pad, max(ys) + pad)


@register_figure("averaging")
def averaging_figures(inputs: GroupInputs) -> list[FigureOut]:
    g = inputs.group
    if not any(is_averaged(g, r) for r in g.runs):
        return []
    return [averaging_figure(inputs, v) for v in inputs.variants]


def _panel(ax: Any, g: Group, variant: Variant, value: Any, handles: dict[str, Any]) -> None:
    """One panel: the value along training per run (averaged runs dashed), decay shading, and for ΔQ L the
    interval bars, for the losses a y range zoomed on the late part."""
    for run, pts in series(g, variant.recs, value).items():
        avg = is_averaged(g, run)
        (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--" if avg else "-",
                       marker="s" if avg else "o", ms=3.5, lw=1.6, color=g.colours[run], label=run_label(g, run),
                       zorder=3)
        handles.setdefault(run, h)
    shade_decay(ax, g, list(handles))
    style_x(ax, g.use_tokens)
    if value is not dq_rel:
        _zoom_late(ax, series(g, variant.recs, value))
    else:
        interval_bars(ax, g, variant.recs)


def averaging_figure(inputs: GroupInputs, variant: Variant) -> FigureOut:
    """FP loss, quantized loss and ΔQ L side by side for the constant-LR run, its averaged runs (dashed) and
    its cooldowns, so averaging and LR decay are compared at equal tokens."""
    g, label, path = inputs.group, variant.label, inputs.path("averaging", variant)
    fig = Figure(figsize=(13.5, 4.3))
    axes = fig.subplots(1, 3, gridspec_kw={"wspace": 0.3})
    panels = ((loss_fp, "FP eval loss (nats/token)", "full precision"),
              (loss_q, "quantized eval loss (nats/token)", label),
              (dq_rel, DQ_LABEL, f"ΔQ L, {label}"))
    handles: dict[str, Any] = {}
    for ax, (value, ylabel, title) in zip(axes, panels):
        _panel(ax, g, variant, value, handles)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    axes[2].yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes[1].legend(handles=list(handles.values()), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15),
                   ncol=min(3, len(handles)), frameon=False)
    title = f"{g.traj}: weight averaging vs LR decay, {label}"
    fig.suptitle(title, fontsize=11)
    caption = (f"Weight averaging (dashed) beside the runs it averages and their cooldowns (solid) along '{g.traj}': "
               f"FP loss (left), quantized loss (middle) and ΔQ L (right) for {label}; shaded: LR decay phases.")
    return FigureOut(path, "averaging", g.traj, title, caption, g.xaxis, save_figure(fig, path))
