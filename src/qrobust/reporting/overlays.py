"""What figures along training draw behind or over their lines from a group: LR decay and warmup spans, the
LR curves on a right axis, and the 95 % interval bars of ΔQ L."""
from __future__ import annotations

from typing import Any, Sequence

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..results.records import VariantRecord
from .groups import Group, interval_of, lr_points, run_of
from .style import interval_bar, num


def shade_decay(ax: Any, g: Group, runs: list[str]) -> list[Any]:
    """Shade each run's decay (light, run colour) and warmup (hatched) spans; returns legend handles."""
    handles: list[Any] = []
    warmup_drawn = False
    for run in runs:
        pts = lr_points(g, run)
        if len(pts) < 2:
            continue
        peak = max(lr for _, lr in pts)
        at_peak = [i for i, (_, lr) in enumerate(pts) if lr >= peak * (1 - 1e-6)]
        if at_peak[0] > 0 and not warmup_drawn:  # branches share the parent's warmup: draw it once
            ax.axvspan(pts[0][0], pts[at_peak[0]][0], facecolor="none", edgecolor="0.6", hatch="///",
                       linewidth=0, alpha=0.5, zorder=0)
            handles.append(Patch(facecolor="none", edgecolor="0.6", hatch="///", label="warmup"))
            warmup_drawn = True
        if at_peak[-1] < len(pts) - 1:
            ax.axvspan(pts[at_peak[-1]][0], pts[-1][0], color=g.colours[run], alpha=0.08, linewidth=0, zorder=0)
            handles.append(Patch(color=g.colours[run], alpha=0.2, label=f"LR decay: {run}"))
    return handles


def draw_lr(ax: Any, g: Group, runs: list[str]) -> list[Any]:
    """The runs' LR schedules, faint, on a right axis; returns the legend handle (none without curves)."""
    curves = {run: lr_points(g, run) for run in runs}
    curves = {k: v for k, v in curves.items() if len(v) >= 2}
    if not curves:
        return []
    ax2 = ax.twinx()
    for run, pts in curves.items():
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], color=g.colours[run], lw=0.9, alpha=0.35, zorder=1)
    ax2.set_ylabel("learning rate (right axis)", color="0.35")
    ax2.set_ylim(0, 1.12 * max(lr for pts in curves.values() for _, lr in pts) or 1.0)
    ax2.tick_params(axis="y", colors="0.35", labelsize=8)
    return [Line2D([], [], color="0.5", lw=0.9, alpha=0.5, label="LR schedule (right axis)")]


def interval_bars(ax: Any, g: Group, recs: Sequence[VariantRecord]) -> bool:
    """Vertical 95 % interval bars at each plotted ΔQ L point; True if any was drawn."""
    drawn = False
    for r in recs:
        x, y, ci = g.x(r), num(r.metrics.dq_rel), interval_of(r)
        if ci is None or y is None or not isinstance(x, (int, float)) or run_of(r) not in g.colours:
            continue
        interval_bar(ax, x, y, ci, color=g.colours[run_of(r)], lw=0.8, capsize=2, alpha=0.7, zorder=2)
        drawn = True
    return drawn
