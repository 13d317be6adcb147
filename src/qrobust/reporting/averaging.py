"""The paper's F4 view: weight averaging against LR decay, FP loss, quantized loss and ΔQ L side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from .figures import (DQ_LABEL, FigureOut, _error_bars, _Group, _is_averaged, _run_label, _save, _series, _shade,
                      _style_x)


def _zoom_late(ax: Any, series: dict[str, list[tuple[float, float]]]) -> None:
    """Fit y to the last two thirds of training: early losses (5+ nats) would flatten the differences
    between averaging and decay that the figure is about; earlier points run off the top."""
    xs = [x for pts in series.values() for x, _ in pts]
    if not xs:
        return
    cut = min(xs) + (max(xs) - min(xs)) / 3
    ys = [y for pts in series.values() for x, y in pts if x >= cut]
    if len(ys) >= 2 and max(ys) > min(ys):
        pad = 0.08 * (max(ys) - min(ys))
        ax.set_ylim(min(ys) - pad, max(ys) + pad)


def averaging_figure(g: _Group, label: str, recs: list[dict[str, Any]], path: Path) -> FigureOut:
    """The paper's F4 view: FP loss, quantized loss and ΔQ L side by side for the constant-LR run, its
    averaged runs (dashed) and its cooldowns, so averaging and LR decay are compared at equal tokens."""
    fig = Figure(figsize=(13.5, 4.3))
    axes = fig.subplots(1, 3, gridspec_kw={"wspace": 0.3})
    panels = (("metrics.loss_fp", "FP eval loss (nats/token)", "full precision"),
              ("metrics.loss_q", "quantized eval loss (nats/token)", label),
              ("metrics.dq_rel", DQ_LABEL, f"ΔQ L, {label}"))
    handles: dict[str, Any] = {}
    for ax, (metric, ylabel, title) in zip(axes, panels):
        for run, pts in _series(g, recs, metric).items():
            avg = _is_averaged(g, run)
            (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--" if avg else "-", marker="s" if avg else "o",
                           ms=3.5, lw=1.6, color=g.colours[run], label=_run_label(g, run), zorder=3)
            handles.setdefault(run, h)
        _shade(ax, g, list(handles))
        _style_x(ax, g.use_tokens)
        if metric != "metrics.dq_rel":
            _zoom_late(ax, _series(g, recs, metric))
        else:
            _error_bars(ax, g, recs)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    axes[2].yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes[1].legend(handles=list(handles.values()), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15),
                   ncol=min(3, len(handles)), frameon=False)
    title = f"{g.traj}: weight averaging vs LR decay, {label}"
    fig.suptitle(title, fontsize=11)
    caption = (f"Weight averaging (dashed) beside the runs it averages and their cooldowns (solid) along '{g.traj}': "
               f"FP loss (left), quantized loss (middle) and ΔQ L (right) for {label}; shaded: LR decay phases.")
    return FigureOut(path, "averaging", g.traj, title, caption, "tokens" if g.use_tokens else "step", _save(fig, path))
