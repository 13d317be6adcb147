"""Loss-geometry figures: λmax, Hessian trace and weight kurtosis along training next to ΔQ L, ΔQ L against
λmax / trace per variant with Spearman's rank correlation (the paper's "why" for PTQ error), and per-layer
sharpness.

Geometry records come from a sweep's ``geometry`` setting, one per checkpoint; they are matched to the
quantization records of the same trajectory by checkpoint name. Figures share the run colours and decay
shading of the ΔQ L figures.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from scipy.stats import spearmanr

from ..results.records import GeometryRecord, VariantRecord
from .dq import dq_rel
from .groups import Group, run_label, run_of, series
from .overlays import shade_decay
from .registry import GroupInputs, register_figure
from .style import DQ_LABEL, FigureOut, legend_under_figure, num, save_figure, style_x
from .variants import Variant


def lambda_max(r: GeometryRecord) -> Any:
    return r.geometry.lambda_max


def trace(r: GeometryRecord) -> Any:
    return r.geometry.trace.get("trace")


def kurtosis(r: GeometryRecord) -> Any:
    return (r.geometry.weights.get("overall") or {}).get("kurtosis")


Panel = tuple[Callable[[GeometryRecord], Any], str]
PANELS: tuple[Panel, ...] = ((lambda_max, "Hessian λmax"), (trace, "Hessian trace (Hutch++)"),
                             (kurtosis, "weight kurtosis (quantized linears)"))


def _key(r: VariantRecord | GeometryRecord) -> tuple[str, int]:
    return str(r.checkpoint.name), r.checkpoint.step


def _trace_bars(ax: Any, g: Group, geos: list[GeometryRecord]) -> None:
    """95 % intervals of the trace estimates (as estimated: not clipped at the point)."""
    for r in geos:
        lo, hi, y = (num(r.geometry.trace.get(k)) for k in ("ci_low", "ci_high", "trace"))
        x = g.x(r)
        if None not in (lo, hi, y) and run_of(r) in g.colours and isinstance(x, (int, float)):
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], color=g.colours[run_of(r)], lw=0.8, capsize=2,
                        zorder=2)


@register_figure("geometry", needs=("records", "geometry"))
def geometry_along(inputs: GroupInputs) -> list[FigureOut]:
    g, geos, path = inputs.group, inputs.geometry, inputs.path("geometry")
    panels = [(m, t) for m, t in PANELS if any(num(m(r)) is not None for r in geos)]
    if not panels:
        return []
    fig = Figure(figsize=(4.6 * len(panels), 4.3))
    axes = fig.subplots(1, len(panels), gridspec_kw={"wspace": 0.3}, squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, (value, title) in zip(axes, panels):
        for run, pts in series(g, geos, value).items():
            (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, lw=1.6,
                           color=g.colours[run], label=run_label(g, run), zorder=3)
            handles.setdefault(run, h)
        if value is trace:
            _trace_bars(ax, g, geos)
        shade_decay(ax, g, list(handles))
        style_x(ax, g.use_tokens)
        ax.set_title(title, fontsize=10)
    legend_under_figure(fig, list(handles.values()))
    title = f"{g.traj}: loss geometry along training"
    fig.suptitle(title, fontsize=11)
    caption = (f"Top Hessian eigenvalue (Lanczos), Hessian trace (Hutch++, bars: 95 % intervals) and the kurtosis "
               f"of the quantized linears' weights along '{g.traj}', per run; shaded: LR decay phases.")
    return [FigureOut(path, "geometry", g.traj, title, caption, g.xaxis, save_figure(fig, path))]


def rank_correlation(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Spearman ρ and its two-sided p-value; NaN when fewer than 3 points or a constant variable."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan, math.nan
    r = spearmanr(xs, ys)
    return float(r.statistic), float(r.pvalue)


def _natural(name: str) -> list[Any]:
    """'layers.10' after 'layers.9': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _layer_lambda(r: GeometryRecord, layer: str) -> float | None:
    return num((r.geometry.layers.get(layer) or {}).get("values", [None])[0])


@register_figure("layer_sharpness", needs=("records", "geometry"))
def layer_sharpness(inputs: GroupInputs) -> list[FigureOut]:
    """Heatmap of per-layer λmax (each quantized linear's weight alone): layers × checkpoints."""
    from matplotlib.colors import LogNorm
    g, path = inputs.group, inputs.path("layer_sharpness")
    cols = [r for run in g.order for r in sorted((x for x in inputs.geometry if run_of(x) == run and x.geometry.layers),
                                                 key=lambda x: x.checkpoint.step)]
    if not cols:
        return []
    layers = sorted(cols[0].geometry.layers, key=_natural)
    vals = [[_layer_lambda(c, layer) for c in cols] for layer in layers]
    pos = [v for row in vals for v in row if v is not None and v > 0]
    if not pos:
        return []
    grid = [[v if v is not None and v > 0 else float("nan") for v in row] for row in vals]
    fig = Figure(figsize=(max(6.0, 0.32 * len(cols) + 3.5), max(3.5, 0.26 * len(layers) + 1.8)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, aspect="auto", cmap="magma", norm=LogNorm(vmin=min(pos), vmax=max(pos)))
    fig.colorbar(im, ax=ax, label="λmax of the layer's weight alone")
    ax.set_yticks(range(len(layers)), layers, fontsize=6)
    ax.set_xticks(range(len(cols)), [f"{run_of(c)}@{c.checkpoint.step}" for c in cols], rotation=90, fontsize=6)
    title = f"{g.traj}: per-layer sharpness"
    ax.set_title(title, fontsize=11)
    caption = (f"Top Hessian eigenvalue of the loss w.r.t. each quantized linear's weight alone (the other weights "
               f"fixed), per checkpoint of '{g.traj}' (columns: runs in order, then steps); log colour scale.")
    return [FigureOut(path, "layer_sharpness", g.traj, title, caption, "layer", save_figure(fig, path))]


@register_figure("dq_vs_geometry", needs=("records", "geometry"))
def dq_vs_geometry_figures(inputs: GroupInputs) -> list[FigureOut]:
    figs = [dq_vs_geometry(inputs, v) for v in inputs.variants]
    return [f for f in figs if f is not None]


def _scatter(ax: Any, g: Group, pairs: list[tuple[VariantRecord, GeometryRecord]], panel: Panel) -> str:
    """ΔQ L against one geometry value, one point per checkpoint; returns the correlation's summary."""
    value, xlabel = panel
    xs, ys = [], []
    for r, geo in pairs:
        x, y = num(value(geo)), num(r.metrics.dq_rel)
        if x is None or y is None:
            continue
        xs.append(x)
        ys.append(y)
        ax.scatter([x], [y], s=22, color=g.colours.get(run_of(r), "0.5"), edgecolor="0.2", linewidth=0.4, zorder=3)
    rho, p = rank_correlation(xs, ys)
    ax.set_title(f"Spearman ρ = {rho:.2f} (p = {p:.2g}, n = {len(xs)})", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(DQ_LABEL)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.grid(True, alpha=0.3, linewidth=0.6)
    return f"{xlabel}: ρ = {rho:.2f}"


def dq_vs_geometry(inputs: GroupInputs, variant: Variant) -> FigureOut | None:
    g, label, path = inputs.group, variant.label, inputs.path("dq_vs_geometry", variant)
    by = {_key(r): r for r in inputs.geometry}
    pairs = [(r, by[_key(r)]) for r in variant.recs if _key(r) in by and num(dq_rel(r)) is not None]
    panels = [(m, t) for m, t in PANELS[:2] if sum(num(m(geo)) is not None for _, geo in pairs) >= 3]
    if not panels:
        return None
    fig = Figure(figsize=(5.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), gridspec_kw={"wspace": 0.28}, squeeze=False)[0]
    stats = [_scatter(ax, g, pairs, panel) for ax, panel in zip(axes, panels)]
    runs = [r for r in g.order if any(run_of(x) == r for x, _ in pairs)]
    handles = [axes[0].scatter([], [], s=22, color=g.colours[r], edgecolor="0.2", linewidth=0.4,
                               label=run_label(g, r)) for r in runs]
    legend_under_figure(fig, handles)
    title = f"{g.traj}: ΔQ L vs curvature, {label}"
    fig.suptitle(title, fontsize=11)
    caption = (f"ΔQ L ({label}) against the Hessian's top eigenvalue and trace at the same checkpoint, one point per "
               f"checkpoint of '{g.traj}', colour = run; {'; '.join(stats)} (Spearman rank correlation).")
    return FigureOut(path, "dq_vs_geometry", g.traj, title, caption, "geometry", save_figure(fig, path))
