"""The ``scaling`` figure, one per variant: ΔQ L against tokens per parameter (log x), one colour per model
size, the constant-LR run solid and each cooldown dashed, with the two pooled fits drawn over them (tokens
form dotted; schedule form at full decay dash-dotted), so a reader sees whether the cooldowns leave the
constant-LR curve at equal D/N."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ...reporting.figures import FigureOut, slug
from ...reporting.style import save_figure
from .claims import Stores, by_variant
from .scaling_fits import Points, predict
from .scaling_points import size_rows

COLOURS = ["#1c7ed6", "#e8590c", "#2b8a3e", "#862e9c", "#c92a2a", "#5c940d"]


def _pooled_fits(claims: list[dict[str, Any]], cell: str) -> dict[str, dict[str, float]] | None:
    for c in claims:
        if c.get("key") == "fit_pooled" and c["cell"] == cell and c["comparisons"]:
            return c["comparisons"][0]["fits"]
    return None


def _theta(f: dict[str, float]) -> np.ndarray:
    return np.array([f[k] for k in ("log_k", "gamma", "eta", "delta") if k in f])


def _curves(ax: Any, fits: dict[str, dict[str, float]], n: float, xs: np.ndarray, colour: str) -> None:
    """The pooled forms at this size's N: tokens form, and the schedule form at full decay."""
    p = Points(xs, np.full_like(xs, n), np.ones_like(xs), xs * 0, xs * 0 + 1, xs * 0 - 1)
    ax.plot(xs, 100 * predict(_theta(fits["tokens"]), "tokens", True, p), ":", color=colour, lw=1.4, alpha=0.8)
    ax.plot(xs, 100 * predict(_theta(fits["schedule"]), "schedule", True, p), "-.", color=colour, lw=1.0, alpha=0.6)


def scaling_figure(spec: Any, rows_by_size: dict[str, list[dict[str, Any]]], fits: dict[str, Any] | None,
                   cell: str, path: Path) -> FigureOut:
    """One variant's points, runs and pooled fits."""
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, (size, rows) in enumerate(sorted(rows_by_size.items(), key=lambda kv: kv[1][0]["n"] if kv[1] else 0)):
        colour = COLOURS[i % len(COLOURS)]
        for run in sorted({r["run"] for r in rows}):
            rs = sorted((r for r in rows if r["run"] == run), key=lambda r: r["x"])
            main = run == "main"
            start = rs[0]["record"].checkpoint.parent_step
            rs = [r for r in rows if r["run"] == "main" and r["step"] == start and not main] + rs  # from its branch point
            ax.plot([r["x"] for r in rs], [100 * r["dq"] for r in rs], "-" if main else "--", marker="o",
                    ms=2.5 if main else 3.5, color=colour, lw=1.3 if main else 1.0,
                    label=f"{size} (N = {rs[0]['n']:,})" if main else None)
        if fits and rows:
            xs = np.geomspace(min(r["x"] for r in rows), max(r["x"] for r in rows), 60)
            _curves(ax, fits, float(rows[0]["n"]), xs, colour)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("tokens per parameter D/N (N: quantized weights)")
    ax.set_ylabel("ΔQ L (%)")
    ax.legend(fontsize=8, loc="upper left")
    title = f"{spec.name}: ΔQ L vs tokens per parameter, {cell}"
    caption = ("One colour per model size; solid: the constant-LR run, dashed: its cooldowns (every checkpoint). "
               "Dotted: the tokens form k·(D/N)^γ·(N/1e6)^η fitted to all sizes; dash-dotted: the schedule form "
               "at the end of a full decay (×(1 + δ)). Cooldowns above the dotted curve at equal D/N are the decay "
               "effect the tokens form cannot express.")
    return FigureOut(path, "scaling", spec.name, title, caption, cell, save_figure(fig, path))


def scaling_figures(spec: Any, stores: Stores, trajs: dict[str, dict[str, Any]], fig_dir: Path,
                    claims: list[dict[str, Any]]) -> list[FigureOut]:
    """One figure per variant."""
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for label, (records, runs_meta) in stores.items():
        for cell, recs in by_variant(records).items():
            per.setdefault(cell, {})[label] = size_rows(label, recs, runs_meta)
    return [scaling_figure(spec, per[cell], _pooled_fits(claims, cell), cell, fig_dir / f"{spec.name}_{slug(cell)}.png")
            for cell in sorted(per)]
