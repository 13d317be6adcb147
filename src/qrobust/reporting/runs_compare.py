"""Figures across separately trained runs (the paper's peak-LR and weight-decay views): FP loss and ΔQ L
along tokens, the FP-to-quantized loss curve, and ΔQ L against FP loss with the levels a verdict compared."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, NamedTuple

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

from ..results.records import VariantRecord
from ..results.records import variant_records
from .groups import interval_of
from .style import BRANCH_COLOURS, DQ_LABEL, FigureOut, interval_bar, num, save_figure, slug

Point = tuple[float, float, float, float, "tuple[float, float] | None"]


class RunAxes(NamedTuple):
    fp: Any  # FP loss along tokens
    dq: Any  # ΔQ L along tokens
    curve: Any  # quantized against FP loss
    eq: Any  # ΔQ L against FP loss


def _points(recs: list[VariantRecord]) -> list[Point]:
    """(tokens, FP loss, quantized loss, ΔQ L, interval) of a run's main checkpoints in step order."""
    out = []
    for r in sorted(recs, key=lambda r: r.checkpoint.step):
        if r.checkpoint.run not in (None, "main"):
            continue
        vals = [num(v) for v in (r.checkpoint.tokens, r.metrics.loss_fp, r.metrics.loss_q, r.metrics.dq_rel)]
        if None in vals:
            continue
        out.append((*vals, interval_of(r)))  # type: ignore[arg-type]
    return out


def _forest(ax: Any, comparisons: list[dict[str, Any]]) -> None:
    """Each compared difference ΔQ L(A) − ΔQ L(B) with its 95 % interval, one row per FP-loss level,
    grouped by pair: right of 0 is the direction the finding expects."""
    labels: list[str] = []
    ticks: list[float] = []
    y = 0.0
    pairs = list(dict.fromkeys((c["a"], c["b"]) for c in comparisons))
    for i, (a, b) in enumerate(pairs):
        colour = BRANCH_COLOURS[(i + 1) % len(BRANCH_COLOURS)]
        for k, c in enumerate(sorted((c for c in comparisons if (c["a"], c["b"]) == (a, b)), key=lambda c: c["level"])):
            ax.errorbar([c["diff"]], [y], xerr=[[c["diff"] - c["low"]], [c["high"] - c["diff"]]], fmt="o", ms=4,
                        color=colour, capsize=2, lw=1.2, label=None if k else f"A = {a}, B = {b}")
            labels.append(f"FP {c['level']:.2f}")
            ticks.append(y)
            y += 1
        y += 0.6  # a gap between pairs
    ax.axvline(0.0, color="#444444", lw=0.9)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), frameon=False)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("ΔQ L(A) − ΔQ L(B) at equal FP loss, 95 % interval")
    ax.set_title("compared differences (> 0: as the finding expects)", fontsize=10)
    ax.grid(alpha=0.25, axis="x")


def _draw_runs(axes: RunAxes, points: dict[str, list[Point]]) -> list[float]:
    """One colour per run in every panel; returns each drawn run's lowest FP loss."""
    lows: list[float] = []
    for i, (label, pts) in enumerate(points.items()):
        if not pts:
            continue
        colour = BRANCH_COLOURS[i % len(BRANCH_COLOURS)]
        tok, fp, q, dq, cis = zip(*pts)
        kw = {"color": colour, "marker": "o", "ms": 3, "lw": 1.5, "label": label}
        axes.fp.plot(tok, fp, **kw)
        axes.dq.plot(tok, dq, **kw)
        for x, y, ci in zip(tok, dq, cis):
            if ci is not None:
                interval_bar(axes.dq, x, y, ci, color=colour, lw=0.7, capsize=1.5, alpha=0.6)
        axes.curve.plot(fp, q, **kw)
        axes.eq.plot(fp, dq, **kw)
        lows.append(min(fp))
    return lows


def _zoom(axes: RunAxes, points: dict[str, list[Point]], lows: list[float], levels: list[float]) -> None:
    """Zoom the loss views on the trained part (the first checkpoints sit at 6+ nats), keeping every compared
    level in view, and draw the no-degradation diagonal."""
    top = max([max(lows) + 1.2 * (max(lows) - min(lows) + 0.3)] + [lv + 0.1 for lv in levels])
    for ax in (axes.curve, axes.eq):
        ax.set_xlim(min(lows) - 0.05, top)
    axes.fp.set_ylim(min(lows) - 0.05, top)
    ys = [p[2] for pts in points.values() for p in pts if p[1] <= top]
    if ys:
        axes.curve.set_ylim(min(lows) - 0.05, max(ys) + 0.05)
    dqs = [p[3] for pts in points.values() for p in pts if p[1] <= top]
    if dqs:
        pad = 0.1 * (max(dqs) - min(dqs) + 1e-4)
        axes.eq.set_ylim(min(dqs) - pad, max(dqs) + pad)
    lo, hi = axes.curve.get_xlim()
    axes.curve.plot([lo, hi], [lo, hi], color="#888888", lw=0.8, ls=":", label="no degradation")


def _label_axes(axes: RunAxes, cell: str) -> None:
    for ax in (axes.fp, axes.dq):
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("training tokens")
    for ax in (axes.curve, axes.eq):
        ax.set_xlabel("FP eval loss (nats/token)")
        ax.invert_xaxis()  # training moves right
    axes.fp.set_ylabel("FP eval loss (nats/token)")
    axes.dq.set_ylabel(DQ_LABEL)
    axes.curve.set_ylabel(f"quantized eval loss, {cell}")
    axes.eq.set_ylabel(DQ_LABEL)
    for ax in (axes.dq, axes.eq):
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.fp.set_title("FP loss along training", fontsize=10)
    axes.dq.set_title(f"ΔQ L along training, {cell} (95 % intervals)", fontsize=10)
    axes.curve.set_title("FP → quantized loss (the paper's view)", fontsize=10)
    axes.eq.set_title("ΔQ L at equal FP loss (dashed: compared levels)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.25)
    axes.curve.legend(fontsize=8, frameon=False)


def runs_figure(runs: dict[str, Iterable[Any]], cell: str, title: str, path: Path,
                comparisons: list[dict[str, Any]] | None = None) -> FigureOut:
    """One variant's records of several runs (label -> typed records or dicts), in the order given;
    ``comparisons`` (a verdict's, with ``level``) mark the compared FP losses and get a panel of their own."""
    levels = sorted({c["level"] for c in comparisons or []})
    points = {label: _points(variant_records(recs)) for label, recs in runs.items()}
    fig = Figure(figsize=(16.5, 8.2))
    grid = fig.add_gridspec(2, 3, wspace=0.3, hspace=0.32, width_ratios=[1, 1, 0.9])
    axes = RunAxes(fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 0]),
                   fig.add_subplot(grid[1, 1]))
    if comparisons:
        _forest(fig.add_subplot(grid[:, 2]), comparisons)
    lows = _draw_runs(axes, points)
    if lows:
        _zoom(axes, points, lows, levels)
    for lv in levels:
        axes.eq.axvline(lv, color="#888888", lw=0.6, ls="--", alpha=0.6)
    _label_axes(axes, cell)
    fig.suptitle(title, fontsize=11)
    caption = (f"{title}, {cell}: FP loss and ΔQ L along training tokens (top); quantized against FP loss and "
               "ΔQ L against FP loss, x reversed so training moves right (bottom); right: every compared difference "
               "with its paired-bootstrap interval. Main runs only.")
    return FigureOut(path, "runs", slug(title), title, caption, "tokens", save_figure(fig, path))
