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


def runs_figure(runs: dict[str, list[dict[str, Any]]], cell: str, title: str, path: Path,
                levels: list[float] | None = None) -> FigureOut:
    """One variant's records of several runs (label -> records), in the order given."""
    fig = Figure(figsize=(11.5, 8.2))
    (ax_fp, ax_dq), (ax_curve, ax_eq) = fig.subplots(2, 2, gridspec_kw={"wspace": 0.28, "hspace": 0.32})
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
        top = max([max(lows) + 1.2 * (max(lows) - min(lows) + 0.3)] + [lv + 0.1 for lv in levels or []])
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
    for lv in levels or []:
        ax_eq.axvline(lv, color="#888888", lw=0.7, ls="--")
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
               "ΔQ L against FP loss, x reversed so training moves right (bottom). Main runs only.")
    return FigureOut(path, "runs", slug(title), title, caption, "tokens", _save(fig, path))
