"""Loss-geometry figures: λmax, Hessian trace and weight kurtosis along training next to ΔQ L, and ΔQ L
against λmax / trace per variant with Spearman's rank correlation (the paper's "why" for PTQ error).

Geometry records come from a sweep's ``geometry`` setting, one per checkpoint; they are matched to the
quantization records of the same trajectory by checkpoint name. Figures share the run colours and
decay shading of the ΔQ L figures.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from scipy.stats import spearmanr

from .figures import (DQ_LABEL, FigureOut, _Group, _run, _run_label, _save, _series, _shade, _style_x,
                      get, num, slug)

PANELS = (("geometry.lambda_max", "Hessian λmax"), ("geometry.trace.trace", "Hessian trace (Hutch++)"),
          ("geometry.weights.overall.kurtosis", "weight kurtosis (quantized linears)"))


def _legend_under(fig: Figure, handles: list[Any]) -> None:
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(handles)),
               fontsize=8, frameon=False)


def _key(r: dict[str, Any]) -> tuple[str, Any]:
    return str(get(r, "checkpoint.name")), get(r, "checkpoint.step")


def geometry_along(g: _Group, geos: list[dict[str, Any]], path: Path) -> FigureOut | None:
    panels = [(m, t) for m, t in PANELS if any(num(get(r, m)) is not None for r in geos)]
    if not panels:
        return None
    fig = Figure(figsize=(4.6 * len(panels), 4.3))
    axes = fig.subplots(1, len(panels), gridspec_kw={"wspace": 0.3}, squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, (metric, title) in zip(axes, panels):
        for run, pts in _series(g, geos, metric).items():
            (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, lw=1.6,
                           color=g.colours[run], label=_run_label(g, run), zorder=3)
            handles.setdefault(run, h)
        if metric == "geometry.trace.trace":  # 95 % intervals of the trace estimates
            for r in geos:
                lo, hi, y = (num(get(r, f"geometry.trace.{k}")) for k in ("ci_low", "ci_high", "trace"))
                x = get(r, "checkpoint.tokens" if g.use_tokens else "checkpoint.step")
                if None not in (lo, hi, y) and _run(r) in g.colours and isinstance(x, (int, float)):
                    ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], color=g.colours[_run(r)], lw=0.8, capsize=2,
                                zorder=2)
        _shade(ax, g, list(handles))
        _style_x(ax, g.use_tokens)
        ax.set_title(title, fontsize=10)
    _legend_under(fig, list(handles.values()))
    title = f"{g.traj}: loss geometry along training"
    fig.suptitle(title, fontsize=11)
    caption = (f"Top Hessian eigenvalue (Lanczos), Hessian trace (Hutch++, bars: 95 % intervals) and the kurtosis "
               f"of the quantized linears' weights along '{g.traj}', per run; shaded: LR decay phases.")
    return FigureOut(path, "geometry", g.traj, title, caption, "tokens" if g.use_tokens else "step", _save(fig, path))


def rank_correlation(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Spearman ρ and its two-sided p-value; NaN when fewer than 3 points or a constant variable."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan, math.nan
    r = spearmanr(xs, ys)
    return float(r.statistic), float(r.pvalue)


def dq_vs_geometry(g: _Group, label: str, recs: list[dict[str, Any]], geos: list[dict[str, Any]],
                   path: Path) -> FigureOut | None:
    by = {_key(r): r for r in geos}
    pairs = [(r, by[_key(r)]) for r in recs if _key(r) in by and num(get(r, "metrics.dq_rel")) is not None]
    panels = [(m, t) for m, t in PANELS[:2] if sum(num(get(geo, m)) is not None for _, geo in pairs) >= 3]
    if not panels:
        return None
    fig = Figure(figsize=(5.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), gridspec_kw={"wspace": 0.28}, squeeze=False)[0]
    stats = []
    for ax, (metric, xlabel) in zip(axes, panels):
        xs, ys = [], []
        for r, geo in pairs:
            x, y = num(get(geo, metric)), num(get(r, "metrics.dq_rel"))
            if x is None or y is None:
                continue
            xs.append(x)
            ys.append(y)
            ax.scatter([x], [y], s=22, color=g.colours.get(_run(r), "0.5"), edgecolor="0.2", linewidth=0.4, zorder=3)
        rho, p = rank_correlation(xs, ys)
        stats.append(f"{xlabel}: ρ = {rho:.2f}")
        ax.set_title(f"Spearman ρ = {rho:.2f} (p = {p:.2g}, n = {len(xs)})", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(DQ_LABEL)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.grid(True, alpha=0.3, linewidth=0.6)
    runs = [r for r in g.order if any(_run(x) == r for x, _ in pairs)]
    handles = [axes[0].scatter([], [], s=22, color=g.colours[r], edgecolor="0.2", linewidth=0.4,
                               label=_run_label(g, r)) for r in runs]
    _legend_under(fig, handles)
    title = f"{g.traj}: ΔQ L vs curvature, {label}"
    fig.suptitle(title, fontsize=11)
    caption = (f"ΔQ L ({label}) against the Hessian's top eigenvalue and trace at the same checkpoint, one point per "
               f"checkpoint of '{g.traj}', colour = run; {'; '.join(stats)} (Spearman rank correlation).")
    return FigureOut(path, "dq_vs_geometry", g.traj, title, caption, "geometry", _save(fig, path))


def _natural(name: str) -> list[Any]:
    """'layers.10' after 'layers.9': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_sharpness(g: _Group, geos: list[dict[str, Any]], path: Path) -> FigureOut | None:
    """Heatmap of per-layer λmax (each quantized linear's weight alone): layers × checkpoints."""
    from matplotlib.colors import LogNorm
    cols = [r for run in g.order for r in sorted((x for x in geos if _run(x) == run and get(x, "geometry.layers")),
                                                 key=lambda x: get(x, "checkpoint.step") or 0)]
    if not cols:
        return None
    layers = sorted(get(cols[0], "geometry.layers"), key=_natural)
    # layer names contain dots: index the layer table directly, not by dotted path
    vals = [[num(((get(c, "geometry.layers") or {}).get(layer) or {}).get("values", [None])[0]) for c in cols]
            for layer in layers]
    pos = [v for row in vals for v in row if v is not None and v > 0]
    if not pos:
        return None
    grid = [[v if v is not None and v > 0 else float("nan") for v in row] for row in vals]
    fig = Figure(figsize=(max(6.0, 0.32 * len(cols) + 3.5), max(3.5, 0.26 * len(layers) + 1.8)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, aspect="auto", cmap="magma", norm=LogNorm(vmin=min(pos), vmax=max(pos)))
    fig.colorbar(im, ax=ax, label="λmax of the layer's weight alone")
    ax.set_yticks(range(len(layers)), layers, fontsize=6)
    ax.set_xticks(range(len(cols)), [f"{_run(c)}@{get(c, 'checkpoint.step')}" for c in cols], rotation=90, fontsize=6)
    title = f"{g.traj}: per-layer sharpness"
    ax.set_title(title, fontsize=11)
    caption = (f"Top Hessian eigenvalue of the loss w.r.t. each quantized linear's weight alone (the other weights "
               f"fixed), per checkpoint of '{g.traj}' (columns: runs in order, then steps); log colour scale.")
    return FigureOut(path, "layer_sharpness", g.traj, title, caption, "layer", _save(fig, path))


def geometry_figures(g: _Group, variants: list[tuple[str, str, list[dict[str, Any]]]], geos: list[dict[str, Any]],
                     out_dir: Path) -> list[FigureOut]:
    """All geometry figures of one trajectory group (``variants``: (label, file-name part, records))."""
    mine = [r for r in geos if str(r.get("trajectory") or "unnamed") == g.traj and _run(r) in g.runs]
    if not mine:
        return []
    figs = [geometry_along(g, mine, out_dir / f"geometry_{slug(g.traj)}{g.suffix}.png"),
            layer_sharpness(g, mine, out_dir / f"layer_sharpness_{slug(g.traj)}{g.suffix}.png")]
    for label, name, recs in variants:
        figs.append(dq_vs_geometry(g, label, recs, mine, out_dir / f"dq_vs_geometry_{slug(g.traj)}{g.suffix}_{name}.png"))
    return [f for f in figs if f is not None]
