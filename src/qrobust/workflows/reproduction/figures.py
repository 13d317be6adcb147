"""The figures of a reproduction, per verdict kind: the results report's figures of each run (dq, loss,
stable-vs-decay, averaging), or one plot per variant comparing the runs (``equal_fp_loss``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...reporting.figures import FigureOut, make_figures, slug
from ...reporting.runs_compare import runs_figure
from ...results.records import variant_records
from .claims import Stores, by_variant

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
