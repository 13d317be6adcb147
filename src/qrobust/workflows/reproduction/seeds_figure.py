"""The seeds figure of a reproduction: for each claim, every variant's comparisons with one thin line per
training seed and the pooled difference bold, with its interval (training and evaluation noise)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ...reporting.style import FigureOut, save_figure, slug

SEED_COLOURS = ["#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599"]


def _tick(c: dict[str, Any], i: int) -> str:
    """A short x label for a comparison: its step, its FP-loss level, or its position."""
    if c.get("from_step") is not None:
        return f"from {c['from_step']}"
    if c.get("level") is not None:
        return f"{c['level']:.2f}"
    if c.get("step") is not None:
        return f"step {c['step']}"
    return str(i + 1)


def _panel(ax: Any, claim: dict[str, Any], scale: float) -> None:
    comps = claim["comparisons"]
    x = list(range(len(comps)))
    seeds = [s["seed"] for s in comps[0].get("seeds", [])] if comps else []
    for j, seed in enumerate(seeds):
        ys = [scale * c["seeds"][j]["diff"] for c in comps]
        ax.plot(x, ys, "-o", lw=0.8, ms=2.5, alpha=0.75, color=SEED_COLOURS[j % len(SEED_COLOURS)],
                label=f"seed {seed}")
    ys = [scale * c["diff"] for c in comps]
    err = [[scale * (c["diff"] - c["low"]) for c in comps], [scale * (c["high"] - c["diff"]) for c in comps]]
    ax.errorbar(x, ys, yerr=err, fmt="-s", lw=2.4, ms=5, color="black", capsize=3, label="pooled (95 %)")
    ax.axhline(0, color="0.4", ls="--", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([_tick(c, i) for i, c in enumerate(comps)], fontsize=7)
    ax.set_title(f"{claim['cell']}: {claim['status']}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(5))


def claim_figure(spec: Any, text: str, claims: list[dict[str, Any]], path: Path) -> FigureOut:
    """One panel per variant of the claim ``text``."""
    cols = min(4, len(claims))
    rows = math.ceil(len(claims) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.6 * rows + 0.4))
    nats = any(c.get("unit") == "nats" for cl in claims for c in cl["comparisons"])
    scale = 1.0 if nats else 100.0
    for i, cl in enumerate(claims):
        ax = fig.add_subplot(rows, cols, i + 1)
        _panel(ax, cl, scale)
        if i % cols == 0:
            ax.set_ylabel("A − B, " + ("nats" if nats else "points of ΔQ L"), fontsize=8)
        if i == 0:
            ax.legend(fontsize=6, loc="best")
    fig.subplots_adjust(wspace=0.3, hspace=0.55)
    caption = ("Each comparison A − B per training seed (thin lines) and pooled over seeds (bold, with its 95 % "
               "interval covering training and evaluation noise); above the dashed line is the paper's direction.")
    return FigureOut(path, "seeds", spec.name, f"{spec.name}: {text}", caption, "comparison", save_figure(fig, path))


def seeds_figures(spec: Any, claims: list[dict[str, Any]], fig_dir: Path) -> list[FigureOut]:
    """One figure per claim text of a verdict pooled over seeds (claims without comparisons left out)."""
    texts = list(dict.fromkeys(c["claim"] for c in claims))
    figs = []
    for k, text in enumerate(texts):
        mine = [c for c in claims if c["claim"] == text and c["comparisons"]]
        if mine:
            figs.append(claim_figure(spec, text, mine, fig_dir / f"seeds_{spec.name}_{k + 1}_{slug(mine[0].get('key') or 'claim')}.png"))
    return figs
