"""Figures across separately trained runs (the paper's peak-LR and weight-decay views): FP loss and ΔQ L
along tokens, the FP-to-quantized loss curve, and ΔQ L against FP loss with the levels a verdict compared."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

from .figures import BRANCH_COLOURS, DQ_LABEL, FigureOut, _save, ci_of, get, num, slug


def _points(recs: list[dict[str, Any]]) -> list[tuple[float, float, float, float, tuple[float, float] | None]]:
    """(tokens, FP loss, quantized loss, ΔQ L, interval) of a run's main checkpoints in step order."""
    out = []
    for r in sorted(recs, key=lambda r: get(r, "checkpoint.step") or 0):
        if get(r, "checkpoint.run") not in (None, "main"):
            continue
        vals = [num(get(r, k)) for k in ("checkpoint.tokens", "metrics.loss_fp", "metrics.loss_q", "metrics.dq_rel")]
        if None in vals:
            continue
        out.append((*vals, ci_of(r)))  # type: ignore[arg-type]
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


def runs_figure(runs: dict[str, list[dict[str, Any]]], cell: str, title: str, path: Path,
                comparisons: list[dict[str, Any]] | None = None) -> FigureOut:
    """One variant's records of several runs (label -> records), in the order given; ``comparisons``
    (a verdict's, with ``level``) mark the compared FP losses and get a panel of their own."""
    levels = sorted({c["level"] for c in comparisons or []})
    fig = Figure(figsize=(16.5, 8.2))
    grid = fig.add_gridspec(2, 3, wspace=0.3, hspace=0.32, width_ratios=[1, 1, 0.9])
    ax_fp, ax_dq = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_curve, ax_eq = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    if comparisons:
        _forest(fig.add_subplot(grid[:, 2]), comparisons)
    lows: list[float] = []
    for i, (label, recs) in enumerate(runs.items()):
        pts = _points(recs)
        if not pts:
            continue
        colour = BRANCH_COLOURS[i % len(BRANCH_COLOURS)]
        tok, fp, q, dq, cis = zip(*pts)
        kw = {"color": colour, "marker": "o", "ms": 3, "lw": 1.5, "label": label}
        ax_fp.plot(tok, fp, **kw)
        ax_dq.plot(tok, dq, **kw)
        for x, y, ci in zip(tok, dq, cis):
            if ci is not None:
                ax_dq.errorbar([x], [y], yerr=[[max(y - ci[0], 0.0)], [max(ci[1] - y, 0.0)]], color=colour, lw=0.7,
                               capsize=1.5, alpha=0.6)
        ax_curve.plot(fp, q, **kw)
        ax_eq.plot(fp, dq, **kw)
        lows.append(min(fp))
    if lows:  # zoom the loss views on the trained part: the first checkpoints sit at 6+ nats
        top = max([max(lows) + 1.2 * (max(lows) - min(lows) + 0.3)] + [lv + 0.1 for lv in levels])
        for ax in (ax_curve, ax_eq):
            ax.set_xlim(min(lows) - 0.05, top)
        ax_fp.set_ylim(min(lows) - 0.05, top)
        ys = [p[2] for recs in runs.values() for p in _points(recs) if p[1] <= top]
        if ys:
            ax_curve.set_ylim(min(lows) - 0.05, max(ys) + 0.05)
        dqs = [p[3] for recs in runs.values() for p in _points(recs) if p[1] <= top]
        if dqs:
            pad = 0.1 * (max(dqs) - min(dqs) + 1e-4)
            ax_eq.set_ylim(min(dqs) - pad, max(dqs) + pad)
        lo, hi = ax_curve.get_xlim()
        ax_curve.plot([lo, hi], [lo, hi], color="#888888", lw=0.8, ls=":", label="no degradation")
    for lv in levels:
        ax_eq.axvline(lv, color="#888888", lw=0.6, ls="--", alpha=0.6)
    for ax in (ax_fp, ax_dq):
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("training tokens")
    for ax in (ax_curve, ax_eq):
        ax.set_xlabel("FP eval loss (nats/token)")
        ax.invert_xaxis()  # training moves right
    ax_fp.set_ylabel("FP eval loss (nats/token)")
    ax_dq.set_ylabel(DQ_LABEL)
    ax_curve.set_ylabel(f"quantized eval loss, {cell}")
    ax_eq.set_ylabel(DQ_LABEL)
    for ax in (ax_dq, ax_eq):
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax_fp.set_title("FP loss along training", fontsize=10)
    ax_dq.set_title(f"ΔQ L along training, {cell} (95 % intervals)", fontsize=10)
    ax_curve.set_title("FP → quantized loss (the paper's view)", fontsize=10)
    ax_eq.set_title("ΔQ L at equal FP loss (dashed: compared levels)", fontsize=10)
    for ax in (ax_fp, ax_dq, ax_curve, ax_eq):
        ax.grid(alpha=0.25)
    ax_curve.legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    caption = (f"{title}, {cell}: FP loss and ΔQ L along training tokens (top); quantized against FP loss and "
               "ΔQ L against FP loss, x reversed so training moves right (bottom); right: every compared difference "
               "with its paired-bootstrap interval. Main runs only.")
    return FigureOut(path, "runs", slug(title), title, caption, "tokens", _save(fig, path))
