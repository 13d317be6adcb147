"""Predictors of GPTQ ΔQ L, as the report shows them: a predictor-vs-truth figure (one small panel per
predictor, points coloured by run, Spearman ρ in each title) and the HTML section built from the folder
``qrobust predictors`` wrote (``summary.json`` + its figures).

This module only draws and reads what the validation wrote: the statistics are computed in
``workflows.predictor_report``, so the report never loads a model.
"""
from __future__ import annotations

import base64
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..errors import QrobustWarning
from .markup import esc
from .style import BRANCH_COLOURS, MARKERS, FigureOut, legend_under_figure, save_figure, slug

FIGURE_STEM = "predictors"
SECTION_TITLE = "Predictors of GPTQ ΔQ L"


def ratio_text(r: float | None) -> str:
    """A cost ratio as "N× cheaper" (or "N× costlier" below 1)."""
    if r is None or not math.isfinite(r) or r <= 0:
        return "—"
    if r >= 1:
        return f"{r:,.0f}× cheaper" if r >= 10 else f"{r:.2g}× cheaper"
    return f"{1 / r:.2g}× costlier"


def run_key(p: dict[str, Any]) -> str:
    return f"{p['trajectory']}/{p['run']}" if p.get("trajectory") else str(p["run"])


def _panel(ax: Any, pts: list[dict[str, Any]], row: dict[str, Any], colours: dict[str, str]) -> None:
    runs = list(colours)
    for p in pts:
        i = runs.index(run_key(p))
        ax.scatter([p["value"]], [100 * p["truth"]], s=22, color=colours[run_key(p)], marker=MARKERS[i % len(MARKERS)],
                   edgecolors="white", linewidths=0.4, zorder=3)
    rho = row.get("rho")
    ax.set_title(f"{row['predictor']}\nρ = {rho:+.2f}" if rho is not None else f"{row['predictor']}\nρ undefined",
                 fontsize=8.5)
    ax.set_xlabel(row["predictor"].split("/")[0], fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.xaxis.get_offset_text().set_fontsize(7)
    ax.grid(True, alpha=0.3, linewidth=0.6)


def draw_target(pts: list[dict[str, Any]], table: list[dict[str, Any]], target: str, path: Path) -> FigureOut:
    """One figure for one measured variant: a panel per predictor, y the measured ΔQ L in %."""
    rows = [r for r in table if r["target"] == target]
    colours = {r: BRANCH_COLOURS[i % len(BRANCH_COLOURS)] for i, r in enumerate(sorted({run_key(p) for p in pts}))}
    ncols = min(3, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    height = 2.9 * nrows + 0.4
    fig = Figure(figsize=(3.3 * ncols, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, r in zip(axes.flat, rows):
        _panel(ax, [p for p in pts if p["target"] == target and p["predictor"] == r["predictor"]], r, colours)
        ax.set_ylabel(f"{target} ΔQ L (%)", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.suptitle(f"Predictors vs measured {target} ΔQ L ({rows[0]['n'] if rows else 0} checkpoints)", fontsize=10)
    fig.subplots_adjust(hspace=0.75, wspace=0.35, top=1 - 0.85 / height, bottom=0.5 / height)
    legend_under_figure(fig, [Line2D([], [], color=c, marker=MARKERS[i % len(MARKERS)], linestyle="", label=run)
                              for i, (run, c) in enumerate(colours.items())])
    title = f"Predictors vs measured {target} ΔQ L"
    caption = ("Each panel: one predictor (x) against the measured ΔQ L (y) of every checkpoint, coloured by run; "
               "ρ: Spearman rank correlation over all checkpoints.")
    return FigureOut(path, FIGURE_STEM, "", title, caption, "predictor", save_figure(fig, path))


def draw_predictors(pts: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]], out_dir: Path) -> list[FigureOut]:
    """A predictor-vs-truth figure per measured variant (``predictors_<variant>.png``) in ``out_dir``."""
    pts, table = list(pts), list(table)
    return [draw_target(pts, table, t, Path(out_dir) / f"{FIGURE_STEM}_{slug(t)}.png")
            for t in sorted({r["target"] for r in table})]


def _coef(v: Any, ci: Any) -> str:
    if v is None:
        return "—"
    return f"{v:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{v:+.3f}"


def table_html(table: list[dict[str, Any]]) -> str:
    left = ' class="l"'
    head = "".join(f"<th{left if i < 3 else ''}>{esc(h)}</th>" for i, h in enumerate(
        ("target", "predictor", "reads", "Spearman ρ [95% CI]", "Kendall τ [95% CI]", "cost ratio", "n", "ρ ceiling")))
    body = []
    for r in table:
        cells = [r.get("target"), r.get("predictor"), r.get("cost") or "—", _coef(r.get("rho"), r.get("rho_ci")),
                 _coef(r.get("tau"), r.get("tau_ci")), ratio_text(r.get("cost_ratio")), r.get("n"),
                 _coef(r.get("ceiling"), None)]
        body.append("<tr class=\"pred\">" + "".join(f"<td{left if i < 3 else ''}>{esc(c)}</td>"
                                                   for i, c in enumerate(cells)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"


def _figures_html(folder: Path, names: list[Any]) -> str:
    parts = []
    for name in names:
        p = folder / Path(str(name)).name  # only files inside the folder
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f'<figure id="{esc(p.stem)}"><img src="data:image/png;base64,{data}" alt="{esc(p.stem)}">'
                         f"<figcaption>Predictor vs measured ΔQ L per checkpoint, coloured by run. "
                         f"<code>{esc(p.name)}</code></figcaption></figure>")
    return "\n".join(parts)


def predictors_section(folder: Path) -> str | None:
    """The report's predictors section from ``folder/summary.json``; None when there is none (an unreadable
    one is skipped with a warning)."""
    f = Path(folder) / "summary.json"
    if not f.is_file():
        return None
    try:
        s = json.loads(f.read_text())
        table = list(s["table"])
    except (OSError, ValueError, KeyError, TypeError):
        warnings.warn(f"skipped '{f}': not a predictor summary; re-run 'qrobust predictors' to rewrite it",
                      QrobustWarning, stacklevel=2)
        return None
    st = s.get("settings") or {}
    meta = (f"{esc(s.get('n_checkpoints'))} checkpoints of {esc(', '.join(map(str, st.get('stores') or [])))}; "
            f"truth: {esc(st.get('method'))} at {esc(st.get('bits'))} bits; {esc(st.get('n_boot'))} bootstrap "
            "resamples of checkpoints; cost ratio: median of (quantize + eval seconds) / predictor seconds; ρ ceiling: the median ρ "
            "a perfect predictor reaches against the measured values given their bootstrap noise.")
    return (f"<h2>{esc(SECTION_TITLE)}</h2><p class=\"meta\">{meta}</p>" + table_html(table)
            + _figures_html(Path(folder), list(s.get("figures") or [])))
