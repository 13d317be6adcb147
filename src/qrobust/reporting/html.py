"""One self-contained HTML5 page: summary, every figure (base64 PNG), the record table and provenance.

No external resources, no JavaScript: the page can be mailed, archived or opened offline and still show
everything. All text from records is escaped; the page is written atomically.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from ..io.atomic import write_text
from ..results.records import VariantRecord
from ..results.store import Store
from .figures import make_figures
from ..results.records import variant_records
from .markup import CSS, esc, figures_html, fmt, pre
from .monitor_curves import monitor_section, training_folders
from .predictors import predictors_section
from .timings import timings_section
from .provenance import provenance_html
from .style import FigureOut, num

__all__ = ["CSS", "esc", "fmt", "pre", "figures_html", "provenance_html", "render_page", "write_report"]

# (header, field, formatter, left-aligned)
COLUMNS: list[tuple[str, Callable[[VariantRecord], Any], str, bool]] = [
    ("trajectory", lambda r: r.trajectory or None, "s", True),
    ("checkpoint", lambda r: r.checkpoint.name or None, "s", True),
    ("run", lambda r: r.checkpoint.run, "s", True), ("step", lambda r: r.checkpoint.step, "int", False),
    ("tokens", lambda r: r.checkpoint.tokens, "int", False), ("lr", lambda r: r.checkpoint.lr, "lr", False),
    ("phase", lambda r: r.checkpoint.phase, "s", True), ("method", lambda r: r.variant.method, "s", True),
    ("bits", lambda r: r.variant.bits, "s", False), ("group", lambda r: r.variant.group_size, "s", False),
    ("sym", lambda r: r.variant.sym, "s", False), ("loss_fp", lambda r: r.metrics.loss_fp, "loss", False),
    ("loss_q", lambda r: r.metrics.loss_q, "loss", False), ("ΔQ L", lambda r: r.metrics.dq_rel, "pct", False),
    ("dq_abs", lambda r: r.metrics.dq_abs, "loss", False),
    ("ΔQ L 95% CI low", lambda r: r.metrics.dq_ci.low if r.metrics.dq_ci else None, "pct", False),
    ("ΔQ L 95% CI high", lambda r: r.metrics.dq_ci.high if r.metrics.dq_ci else None, "pct", False),
]


def _table_html(records: list[VariantRecord]) -> str:
    head = "".join(f'<th class="l">{esc(h)}</th>' if left else f"<th>{esc(h)}</th>" for h, _, _, left in COLUMNS)
    rows = []
    for r in records:
        cells = "".join(f'<td class="l">{esc(fmt(get(r), k))}</td>' if left else f"<td>{esc(fmt(get(r), k))}</td>"
                        for _, get, k, left in COLUMNS)
        rows.append(f'<tr class="rec">{cells}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{chr(10).join(rows)}\n</tbody></table></div>")


def _summary_html(records: list[VariantRecord], trajs: dict[str, dict[str, Any]], figs: list[FigureOut]) -> str:
    n_traj = len({r.trajectory for r in records} | set(trajs))
    n_ck = len({(r.trajectory, r.checkpoint.name) for r in records})
    n_var = len({json.dumps(asdict(r.variant), sort_keys=True, default=str) for r in records})
    n_bad = sum(1 for r in records if num(r.metrics.dq_rel) is None)
    return (f"<ul><li>Trajectories: {n_traj}</li><li>Checkpoints: {n_ck}</li>"
            f"<li>Quantization variants: {n_var}</li><li>Records: {len(records)}"
            + (f" ({n_bad} without metrics, not plotted)" if n_bad else "") + "</li>"
            f"<li>Figures: {len(figs)}</li></ul>")


def render_page(records: Iterable[Any], trajs: dict[str, dict[str, Any]], figs: list[FigureOut],
                source: str, generated: datetime, configs: list[dict[str, Any]] | None = None,
                sections: list[str] | None = None) -> str:
    """The whole page as a string (pure: no I/O), so tests can check it without touching disk; ``sections``:
    extra HTML sections shown after the figures (e.g. the predictors of GPTQ ΔQ L)."""
    recs = variant_records(records)
    body = [f"<h1>qrobust report</h1><p class=\"meta\">Generated {esc(generated.strftime('%Y-%m-%d %H:%M:%S %Z'))}"
            f" from <code>{esc(source)}</code>.</p>", "<h2>Summary</h2>"]
    if not recs:
        body.append('<p class="empty">No results: this results folder holds no records yet. '
                    "Run a sweep first, then re-generate the report.</p>")
    else:
        body.append(_summary_html(recs, trajs, figs))
        body.append("<h2>Figures</h2>" + (figures_html(figs) or "<p>No plottable records.</p>"))
        body.extend(sections or [])
        body.append("<h2>All records</h2><p class=\"meta\">Sorted by trajectory, run, step, variant. "
                    "ΔQ L = L_q / L_fp − 1.</p>" + _table_html(recs))
    body.append("<h2>Provenance</h2>" + provenance_html(recs, trajs, configs))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>qrobust report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Read the results store, write PNG figures and ``index.html`` into ``out_dir``; return the page path."""
    store = Store(results_dir, create=False)
    records, trajs = store.records(), store.trajectories()  # an unreadable file is skipped with a warning
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(records, trajs, out, store.geometry(), store.side_records("tasks"))
    extra = [monitor_section(folder, out, name) for name, folder in sorted(training_folders(records).items())]
    extra.append(predictors_section(Path(results_dir) / "predictors"))  # written by `qrobust predictors`
    extra.append(timings_section(variant_records(records)))
    page = render_page(records, trajs, figs, str(results_dir), datetime.now(timezone.utc), store.configs(),
                       [x for x in extra if x])
    index = out / "index.html"
    write_text(index, page)
    os.chmod(index, 0o644)  # the temp file behind it was created 0600
    return index
