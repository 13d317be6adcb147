"""Downstream accuracy beside ΔQ L: mean task accuracy of the FP and quantized models along training."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from .figures import DQ_LABEL, FigureOut, _Group, _legend_below, _run, _run_label, _save, _series, _style_x, get, slug


def _mean_acc(rec: dict[str, Any], which: str) -> float | None:
    vals = [r.get("acc") for r in (rec.get(which) or {}).values() if isinstance(r, dict)]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def tasks_figure(g: _Group, label: str, recs: list[dict[str, Any]], task_recs: list[dict[str, Any]],
                 path: Path) -> FigureOut | None:
    mine = [dict(t, acc_fp=_mean_acc(t, "fp"), acc_q=_mean_acc(t, "q")) for t in task_recs
            if str(t.get("trajectory") or "unnamed") == g.traj and get(t, "variant.label") == get(recs[0], "variant.label")
            and _run(t) in g.runs]
    if not mine:
        return None
    fig = Figure(figsize=(12, 4.4))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"wspace": 0.28})
    for run, pts in _series(g, mine, "acc_fp").items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3.5, lw=1.6, color=g.colours[run])
    for run, pts in _series(g, mine, "acc_q").items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--s", ms=3.5, lw=1.2, color=g.colours[run], alpha=0.85)
    for run, pts in _series(g, recs, "metrics.dq_rel").items():
        bx.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3.5, lw=1.6, color=g.colours[run])
    names = sorted({t for r in mine for t in (r.get("fp") or {})})
    ax.set_ylabel(f"mean accuracy over {len(names)} task(s)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    bx.set_ylabel(DQ_LABEL)
    bx.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    for a in (ax, bx):
        _style_x(a, g.use_tokens)
    runs = [r for r in g.order if any(_run(x) == r for x in mine)]
    handles = [Line2D([], [], color=g.colours[r], lw=2.5, label=_run_label(g, r)) for r in runs]
    handles += [Line2D([], [], color="0.2", marker="o", label="FP (solid)"),
                Line2D([], [], color="0.2", ls="--", marker="s", label=f"{label} (dashed)")]
    _legend_below(ax, handles)
    title = f"{g.traj}: downstream accuracy and ΔQ L, {label}"
    fig.suptitle(title, fontsize=11)
    caption = (f"Left: mean accuracy over {', '.join(names)} of the FP (solid) and {label} (dashed) models along "
               f"'{g.traj}'; right: ΔQ L of the same checkpoints.")
    return FigureOut(path, "tasks", g.traj, title, caption, "tokens" if g.use_tokens else "step", _save(fig, path))


def task_figures(g: _Group, variants: list[tuple[str, str, list[dict[str, Any]]]], task_recs: list[dict[str, Any]],
                 out_dir: Path) -> list[FigureOut]:
    figs = [tasks_figure(g, label, recs, task_recs, out_dir / f"tasks_{slug(g.traj)}{g.suffix}_{name}.png")
            for label, name, recs in variants]
    return [f for f in figs if f is not None]
