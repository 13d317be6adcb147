"""One self-contained HTML5 page: summary, every figure (base64 PNG), the record table and provenance.

No external resources, no JavaScript: the page can be mailed, archived or opened offline and still show
everything. All text from records is escaped; the page is written atomically.
"""
from __future__ import annotations

import base64
import html as _html
import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ..results.store import Store
from ..io.atomic import write_text
from .figures import FigureOut, get, make_figures, num

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em}.empty{padding:1em;background:#fff4e5;border:1px solid #f0c36d}
figure{margin:1.5em 0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:60em;margin:.4em auto}
table{border-collapse:collapse;font-size:.82em;width:100%}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f2f2f2;position:sticky;top:0}th.l,td.l{text-align:left}
tbody tr:nth-child(even){background:#fafafa}tbody tr:hover{background:#eef5ff}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.82em}
.scroll{max-height:40em;overflow:auto}
"""

# (header, dotted path, formatter, left-aligned)
_COLUMNS: list[tuple[str, str, str, bool]] = [
    ("trajectory", "trajectory", "s", True), ("checkpoint", "checkpoint.name", "s", True),
    ("run", "checkpoint.run", "s", True), ("step", "checkpoint.step", "int", False),
    ("tokens", "checkpoint.tokens", "int", False), ("lr", "checkpoint.lr", "lr", False),
    ("phase", "checkpoint.phase", "s", True), ("method", "variant.method", "s", True),
    ("bits", "variant.bits", "s", False), ("group", "variant.group_size", "s", False),
    ("sym", "variant.sym", "s", False), ("loss_fp", "metrics.loss_fp", "loss", False),
    ("loss_q", "metrics.loss_q", "loss", False), ("ΔQ L", "metrics.dq_rel", "pct", False),
    ("dq_abs", "metrics.dq_abs", "loss", False), ("ΔQ L 95% CI low", "metrics.dq_ci.low", "pct", False),
    ("ΔQ L 95% CI high", "metrics.dq_ci.high", "pct", False),
]


def esc(v: Any) -> str:
    return _html.escape(str(v), quote=True)


def fmt(v: Any, kind: str) -> str:
    """Table formatting; missing values render as an em dash rather than failing."""
    if v is None:
        return "—"
    if kind == "s":
        return str(v)
    x = num(v)
    if x is None:
        return "—"
    if kind == "int":
        return f"{int(x):,}"
    if kind == "lr":
        return f"{x:.3g}"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    return f"{x:.4f}"


def _figures_html(figs: list[FigureOut]) -> str:
    parts: list[str] = []
    current = None
    for f in figs:
        if f.trajectory != current:
            current = f.trajectory
            parts.append(f"<h3>Trajectory: {esc(current)}</h3>")
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f'<figure id="{esc(f.path.stem)}"><img src="data:image/png;base64,{data}" '
                     f'alt="{esc(f.title)}"><figcaption>{esc(f.caption)} '
                     f"<code>{esc(f.path.name)}</code></figcaption></figure>")
    return "\n".join(parts)


def _table_html(records: list[dict[str, Any]]) -> str:
    head = "".join(f'<th class="l">{esc(h)}</th>' if left else f"<th>{esc(h)}</th>"
                   for h, _, _, left in _COLUMNS)
    rows = []
    for r in records:
        cells = "".join(f'<td class="l">{esc(fmt(get(r, p), k))}</td>' if left else f"<td>{esc(fmt(get(r, p), k))}</td>"
                        for _, p, k, left in _COLUMNS)
        rows.append(f'<tr class="rec">{cells}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{chr(10).join(rows)}\n</tbody></table></div>")


def _cell(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, (list, dict)) else fmt(v, "s")


def _pre(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=1, sort_keys=True, default=str))}</pre>"


def _counted(values: Iterable[Any]) -> list[tuple[Any, int]]:
    """Distinct JSON values with how many records carry each, in first-seen order."""
    c = Counter(json.dumps(v, sort_keys=True, default=str) for v in values)
    return [(json.loads(k), n) for k, n in c.items()]


def _sweep_configs_html(configs: list[dict[str, Any]]) -> str:
    from ..stats import CONFIDENCE, N_BOOT
    out = ["<h3>Sweep configs</h3>"]
    if not configs:
        out.append("<p>No sweep config stored (written by an older qrobust).</p>")
    for c in configs:
        seeds = [f"calibration seed {esc((c.get('calibration') or {}).get('seed'))}"]
        for part in ("tasks", "geometry"):
            if isinstance(c.get(part), dict):
                seeds.append(f"{part} seed {esc(c[part].get('seed'))}")
        out.append(f"<p>Trajectory <code>{esc(c.get('trajectory'))}</code>: {', '.join(seeds)}.</p>{_pre(c)}")
    out.append(f"<p class=\"meta\">Intervals: paired bootstrap, {N_BOOT} resamples of the evaluation blocks, seed 0, "
               f"{int(100 * CONFIDENCE)} % percentile intervals.</p>")
    return "\n".join(out)


def _provenance_html(records: list[dict[str, Any]], trajs: dict[str, dict[str, Any]],
                     configs: list[dict[str, Any]] | None = None) -> str:
    out = ["<h3>Software versions</h3>"]
    for v, n in _counted(r.get("versions") for r in records):
        out.append(f"<p>{n} record(s):</p>{_pre(v)}")
    out.append("<h3>Eval sets</h3><table><thead><tr>" + "".join(
        f"<th>{h}</th>" for h in ("id", "corpus", "split", "n_blocks", "seq_len", "n_tokens", "records")) +
        "</tr></thead><tbody>")
    for e, n in _counted(r.get("eval_set") for r in records):
        e = e if isinstance(e, dict) else {}
        cells = "".join(f"<td>{esc(fmt(e.get(k), 's'))}</td>"
                        for k in ("id", "corpus", "split", "n_blocks", "seq_len", "n_tokens"))
        out.append(f"<tr>{cells}<td>{n}</td></tr>")
    out.append("</tbody></table><h3>Calibration</h3>")
    cals = [(c, n) for c, n in _counted(r.get("calibration") for r in records) if c]
    if not cals:
        out.append("<p>No calibration data used (all variants are data-free).</p>")
    for c, n in cals:
        out.append(f"<p>{n} record(s):</p>{_pre(c)}")
    keys = ("label", "method", "bits", "group_size", "sym", "include", "exclude", "options")
    out.append("<h3>Quantization variants</h3><table><thead><tr>"
               + "".join(f"<th>{k}</th>" for k in keys) + "<th>records</th></tr></thead><tbody>")
    for v, n in _counted(r.get("variant") for r in records):
        v = v if isinstance(v, dict) else {}
        cells = "".join(f"<td>{esc(_cell(v.get(k)))}</td>" for k in keys)
        out.append(f"<tr>{cells}<td>{n}</td></tr>")
    out.append("</tbody></table>")
    out.append("<h3>Trajectories</h3>")
    if not trajs:
        out.append("<p>No trajectory files stored.</p>")
    for name, t in trajs.items():
        runs = t.get("runs") if isinstance(t.get("runs"), dict) else {}
        n_ck = len(t.get("checkpoints") or [])
        out.append(f"<h4>{esc(name)}</h4><p>{n_ck} checkpoint(s), {len(runs)} run(s).</p>")
        for rn, r in runs.items():
            r = r if isinstance(r, dict) else {}
            out.append(f"<p>Run <b>{esc(rn)}</b>: parent {esc(r.get('parent') or '—')}, "
                       f"from step {esc(r.get('from_step') if r.get('from_step') is not None else '—')}, "
                       f"tokens/step {esc(r.get('tokens_per_step') or '—')}; schedule:</p>{_pre(r.get('schedule'))}")
        data, tcfg = t.get("data"), t.get("config")
        if isinstance(tcfg, dict):
            out.append(f"<p>Training config (seed {esc(tcfg.get('seed'))}, data split seed "
                       f"{esc((tcfg.get('data') or {}).get('seed'))}):</p>{_pre(tcfg)}")
        else:
            out.append(f"<p>Data config:</p>{_pre(data)}" if data else "<p>Data config: not recorded.</p>")
        prov = t.get("provenance")
        if isinstance(prov, dict):
            out.append(f"<p>Open-model preset <b>{esc(prov.get('preset'))}</b>; uncertain:</p>"
                       f"{_pre(prov.get('uncertain'))}")
    if configs is not None:
        out.append(_sweep_configs_html(configs))
    hosts = sorted({str(r.get("host")) for r in records if r.get("host")})
    created = sorted(str(r.get("created")) for r in records if r.get("created"))
    if created:
        out.append(f"<p class=\"meta\">Records created {esc(created[0])} … {esc(created[-1])} "
                   f"on host(s): {esc(', '.join(hosts) or '—')}.</p>")
    return "\n".join(out)


def render_page(records: list[dict[str, Any]], trajs: dict[str, dict[str, Any]], figs: list[FigureOut],
                source: str, generated: datetime, configs: list[dict[str, Any]] | None = None) -> str:
    """The whole page as a string (pure: no I/O), so tests can check it without touching disk."""
    n_traj = len({str(r.get("trajectory")) for r in records} | set(trajs))
    n_ck = len({(r.get("trajectory"), get(r, "checkpoint.name")) for r in records})
    n_var = len({json.dumps(r.get("variant"), sort_keys=True, default=str) for r in records})
    n_bad = sum(1 for r in records if num(get(r, "metrics.dq_rel")) is None)
    body = [f"<h1>qrobust report</h1><p class=\"meta\">Generated {esc(generated.strftime('%Y-%m-%d %H:%M:%S %Z'))}"
            f" from <code>{esc(source)}</code>.</p>", "<h2>Summary</h2>"]
    if not records:
        body.append('<p class="empty">No results: this results folder holds no records yet. '
                    "Run a sweep first, then re-generate the report.</p>")
    else:
        body.append(f"<ul><li>Trajectories: {n_traj}</li><li>Checkpoints: {n_ck}</li>"
                    f"<li>Quantization variants: {n_var}</li><li>Records: {len(records)}"
                    + (f" ({n_bad} without metrics, not plotted)" if n_bad else "") + "</li>"
                    f"<li>Figures: {len(figs)}</li></ul>")
        body.append("<h2>Figures</h2>" + (_figures_html(figs) or "<p>No plottable records.</p>"))
        body.append("<h2>All records</h2><p class=\"meta\">Sorted by trajectory, run, step, variant. "
                    "ΔQ L = L_q / L_fp − 1.</p>" + _table_html(records))
    body.append("<h2>Provenance</h2>" + _provenance_html(records, trajs, configs))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>qrobust report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _load_trajectories(store: Store) -> dict[str, dict[str, Any]]:
    """Stored trajectories; an unreadable file is skipped (with a warning) so one bad file never kills the report."""
    return store.trajectories()


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Read the results store, write PNG figures and ``index.html`` into ``out_dir``; return the page path."""
    store = Store(results_dir, create=False)
    records = [r.to_dict() for r in store.records()]
    trajs = _load_trajectories(store)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    geometry = [r.to_dict() for r in store.geometry()]
    tasks = [r.to_dict() for r in store.side_records("tasks")]
    figs = make_figures(records, trajs, out, geometry, tasks)
    page = render_page(records, trajs, figs, str(results_dir), datetime.now(timezone.utc), store.configs())
    index = out / "index.html"
    write_text(index, page)
    os.chmod(index, 0o644)  # the temp file behind it was created 0600
    return index

# public names for workflows/reproduction/page.py (shim until the reporting rebuild makes them public)
figures_html, pre, provenance_html = _figures_html, _pre, _provenance_html
