"""Figures of a trajectory's weight-space geometry: its PCA projection and 2-D loss landscapes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .style import BRANCH_COLOURS, ROOT_COLOUR, FigureOut, save_figure


def _colours(runs: list[str]) -> dict[str, str]:
    order = sorted(dict.fromkeys(runs), key=lambda r: (r != "main", r))
    palette = iter(BRANCH_COLOURS * (1 + len(order) // len(BRANCH_COLOURS)))
    return {r: ROOT_COLOUR if i == 0 else next(palette) for i, r in enumerate(order)}


def _draw_path(ax: Any, points: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """Checkpoints joined per run in step order; the first of each run hollow, the last filled large."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        runs.setdefault(str(p.get("run") or "main"), []).append(p)
    at = {(str(p.get("run") or "main"), p.get("step")): p for p in points}
    for run, pts in runs.items():
        pts = sorted(pts, key=lambda p: p.get("step") or 0)
        fork = at.get((str(pts[0].get("parent")), pts[0].get("parent_step")))
        if fork is not None:  # a branch starts at its parent's checkpoint, so it visibly forks off
            pts = [fork] + pts
        c = colours[run]
        ax.plot([p["x"] for p in pts], [p["y"] for p in pts], "-o", color=c, ms=3.5, lw=1.4, label=run, zorder=4)
        ax.plot([pts[-1]["x"]], [pts[-1]["y"]], "o", color=c, ms=8, mec="white", mew=1.0, zorder=5)
    if points:
        first = min(points, key=lambda p: (p.get("run") != "main", p.get("step") or 0))
        ax.annotate("start", (first["x"], first["y"]), xytext=(4, 4), textcoords="offset points", fontsize=7)


def projection_figure(data: dict[str, Any], path: Path, title: str) -> FigureOut:
    pts = data["points"]
    evr = data["explained_variance_ratio"]
    colours = _colours([str(p.get("run") or "main") for p in pts])
    fig = Figure(figsize=(11, 4.4))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1], "wspace": 0.25})
    _draw_path(ax, pts, colours)
    ax.set_xlabel(f"PC1 ({100 * evr[0]:.1f} % of variance)")
    ax.set_ylabel(f"PC2 ({100 * evr[1]:.1f} % of variance)" if len(evr) > 1 else "PC2")
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.legend(fontsize=8, loc="best")
    k = min(10, len(evr))
    bx.bar(range(1, k + 1), [100 * v for v in evr[:k]], color="0.55", edgecolor="0.3", linewidth=0.6)
    bx.plot(range(1, k + 1), [100 * sum(evr[: i + 1]) for i in range(k)], "-o", color=ROOT_COLOUR, ms=3,
            label="cumulative")
    bx.set_xlabel("principal component")
    bx.set_ylabel("explained variance (%)")
    bx.legend(fontsize=8)
    bx.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    fig.suptitle(title, fontsize=11)
    caption = ("Checkpoints projected on the first two principal directions of the trajectory (exact PCA via "
               "the Gram matrix), joined per run; right: explained-variance ratios.")
    return FigureOut(path, "pca", data.get("trajectory", ""), title, caption, "pca", save_figure(fig, path))


def contour_figure(land: dict[str, Any], path: Path, title: str) -> FigureOut:
    xs, ys, loss = land["xs"], land["ys"], land["loss"]
    fig = Figure(figsize=(6.8, 5.6))
    ax = fig.add_subplot()
    flat = [v for row in loss for v in row if math.isfinite(v)]
    lo, hi = min(flat), max(flat)
    levels = [lo + (hi - lo) * (i / 24) ** 2 for i in range(25)]  # denser near the minimum
    cs = ax.contourf(xs, ys, loss, levels=levels, cmap="viridis_r")
    ax.contour(xs, ys, loss, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(cs, ax=ax, label="eval loss (nats/token)")
    if land["plane"] == "pca":
        _draw_path(ax, land["points"], _colours([str(p.get("run") or "main") for p in land["points"]]))
        ax.legend(fontsize=8, loc="best")
        ev = land.get("explained") or []
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f} %)" if ev else "PC1")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f} %)" if len(ev) > 1 else "PC2")
        caption = ("Eval loss on the plane through the trajectory's mean spanned by its first two principal "
                   "directions; the checkpoints drawn at their PCA coordinates.")
    else:
        ax.plot([0], [0], "*", color="white", ms=12, mec="black")
        ax.set_xlabel("filter-normalised direction 1")
        ax.set_ylabel("filter-normalised direction 2")
        caption = (f"Eval loss around {land['center']} along two random filter-normalised directions "
                   "(Li et al. 2018).")
    ax.set_title(title, fontsize=11)
    return FigureOut(path, f"landscape_{land['plane']}", "", title, caption, land["plane"], save_figure(fig, path))
