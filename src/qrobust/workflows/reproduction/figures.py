"""The figures of a reproduction, per verdict kind: the results report's figures of each run (dq, loss,
stable-vs-decay, averaging), or one plot per variant comparing the runs (``equal_fp_loss``), or a forest plot of
every variant's comparisons (``formats``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ...reporting.figures import FigureOut, make_figures, slug
from ...reporting.style import save_figure
from ...reporting.runs_compare import runs_figure
from ...results.records import variant_records
from .claims import Stores, by_variant
from .formats import COLUMNS, format_rows

Figures = Callable[[Any, Stores, dict[str, dict[str, Any]], Path, list[dict[str, Any]]], list[FigureOut]]


def per_run_figures(kinds: set[str], keep_averaged: bool = False) -> Figures:
    """Figures of ``kinds`` for each run's records (averaged runs left out unless ``keep_averaged``)."""
    def draw(spec: Any, stores: Stores, trajs: dict[str, dict[str, Any]], fig_dir: Path,
             claims: list[dict[str, Any]]) -> list[FigureOut]:
        figs = []
        for label, (records, runs_meta) in stores.items():
            averaged = {n for n, m in runs_meta.items() if m.get("averaged")}
            recs = variant_records(records)
            recs = recs if keep_averaged else [r for r in recs if r.checkpoint.run not in averaged]
            figs += make_figures(recs, {label: trajs[label]}, fig_dir, kinds=kinds)
        return figs
    return draw


def equal_fp_loss_figures(spec: Any, stores: Stores, trajs: dict[str, dict[str, Any]], fig_dir: Path,
                          claims: list[dict[str, Any]]) -> list[FigureOut]:
    """Per variant: the runs' ΔQ L against FP loss, with the claim's comparisons marked."""
    order = spec.order or list(spec.runs)
    per_run = {lbl: by_variant(stores[lbl][0]) for lbl in order}
    figs = []
    for cell in sorted(set.intersection(*(set(v) for v in per_run.values()))):
        comps = [c for cl in claims if cl["cell"] == cell for c in cl["comparisons"]]
        figs.append(runs_figure({lbl: per_run[lbl][cell] for lbl in order}, cell, f"{spec.name}: {spec.finding}",
                                fig_dir / f"{spec.name}_{slug(cell)}.png", comps))
    return figs


def formats_figures(spec: Any, stores: Stores, trajs: dict[str, dict[str, Any]], fig_dir: Path,
                    claims: list[dict[str, Any]]) -> list[FigureOut]:
    """The runs' stable-vs-decay bars (every variant), then one forest plot of the F2 and F4 differences
    per format × method."""
    figs = per_run_figures({"stable_vs_decay"})(spec, stores, trajs, fig_dir, claims)
    return figs + [formats_forest(spec, claims, fig_dir / f"{spec.name}_forest.png")]


def formats_forest(spec: Any, claims: list[dict[str, Any]], path: Path) -> FigureOut:
    """Per format × method (rows) and claim (panels): each comparison's difference with its 95 % interval;
    right of the dashed zero line is the paper's direction."""
    rows = format_rows(spec)
    by = {(c["cell"], c.get("key")): c for c in claims}
    fig = Figure(figsize=(4.2 * len(COLUMNS), 0.9 + 0.32 * len(rows)))
    for p, (key, head) in enumerate(COLUMNS):
        ax = fig.add_subplot(1, len(COLUMNS), p + 1)
        scale = 1.0 if key == "loss_vs_cooldown" else 100.0  # ΔQ L in percentage points
        for i, (_, _, label) in enumerate(rows):
            comps = (by.get((label, key)) or {}).get("comparisons", [])
            for j, k in enumerate(comps):
                y = i + (j - (len(comps) - 1) / 2) * 0.18
                colour = "#2b8a3e" if k["for"] else "#c92a2a" if k["against"] else "0.45"
                ax.errorbar([scale * k["diff"]], [y], xerr=[[scale * (k["diff"] - k["low"])],
                                                              [scale * (k["high"] - k["diff"])]],
                            fmt="o", ms=3.5, color=colour, lw=1.1, capsize=2)
        ax.axvline(0, color="0.3", ls="--", lw=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([lbl for _, _, lbl in rows] if p == 0 else [], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(head, fontsize=9)
        ax.set_xlabel("nats" if scale == 1.0 else "percentage points", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    fig.subplots_adjust(wspace=0.12)
    title = f"{spec.name}: F2 and F4 per number format and method"
    caption = ("Each comparison's difference (A − B) and its 95 % paired-bootstrap interval, one row per variant, "
               "one point per cooldown endpoint; right of the dashed line is the paper's direction; green: resolved "
               "for it, red: resolved against, grey: unresolved.")
    return FigureOut(path, "formats", spec.name, title, caption, "variant", save_figure(fig, path))
