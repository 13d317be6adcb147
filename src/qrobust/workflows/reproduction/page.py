"""The HTML page of one reproduction: the finding, the verdict with every comparison behind it, the
figures, and provenance (the experiment file, each run's train and sweep config with its seeds, software
versions, eval sets). Self-contained like the results report, and written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...reporting.figures import FigureOut
from ...reporting.html import CSS, esc, figures_html, pre, provenance_html
from ...stats import CONFIDENCE, N_BOOT
from ...io.atomic import write_text
from .claims import fmt_diff
from .paper import paper_html

STATUS_COLOUR = {"reproduces": "#e6f4ea", "partly": "#fff4e5", "not reproduced": "#fde8e8", "no data": "#eeeeee"}


def _claims_html(claims: list[dict[str, Any]]) -> str:
    rows = []
    for c in claims:
        colour = STATUS_COLOUR.get(c["status"], "#ffffff")
        rows.append(f'<tr class="claim" style="background:{colour}"><td class="l">{esc(c["cell"])}</td>'
                    f'<td class="l">{esc(c["claim"])}</td><td class="l"><b>{esc(c["status"])}</b></td>'
                    f'<td>{c["n_expected_direction"]}/{c["n"]}</td><td>{c["n_for"]}</td><td>{c["n_against"]}</td></tr>')
        if c.get("seed_status"):
            alone = ", ".join(f"seed {s}: {st}" for s, st in c["seed_status"].items())
            rows.append(f'<tr class="seed-status"><td></td><td class="l meta" colspan="5">each seed alone: '
                        f'{esc(alone)}</td></tr>')
        for k in c["comparisons"]:
            mark = "for" if k["for"] else "against" if k["against"] else "unresolved"
            rows.append(f'<tr class="comparison"><td></td><td class="l">{esc(k["what"])}</td>'
                        f'<td class="l">{esc(mark)}</td><td colspan="3">{esc(fmt_diff(k))}'
                        f'{"" if k.get("paired") else " (unpaired)"}{_per_seed(k)}</td></tr>')
    head = ("<tr><th class=\"l\">variant</th><th class=\"l\">claim / comparison (A − B)</th><th class=\"l\">status</th>"
            "<th>expected direction</th><th>resolved for</th><th>resolved against</th></tr>")
    return f"<div class=\"scroll\"><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"


def _per_seed(k: dict[str, Any]) -> str:
    """A pooled comparison's per-seed differences, shown beside the pooled one."""
    if not k.get("seeds"):
        return ""
    items = "; ".join(f"seed {s['seed']}: {fmt_diff(s if 'unit' not in k else {**s, 'unit': k['unit']})}"
                      for s in k["seeds"])
    return f'<br><span class="meta">pooled over seeds (df {k["df"]:.1f}); {esc(items)}</span>'


def noise_note(result: dict[str, Any]) -> str:
    """What the intervals cover: evaluation noise only with one seed, training noise too with several."""
    if result.get("seeds"):
        return (f"Pooled over training seeds {', '.join(map(str, result['seeds']))}: each difference is the mean "
                "of the seeds' differences, its 95 % interval covers training noise (another seed) and evaluation "
                "noise (which text was drawn). A comparison counts in the expected direction only when every seed "
                "points that way; resolved when the pooled interval excludes 0.")
    return ("A comparison is resolved when the 95 % paired-bootstrap interval of A − B excludes 0. "
            "The intervals cover evaluation noise (which text was drawn), not training noise (another seed).")


def table_html(table: dict[str, Any] | None) -> str:
    """A verdict kind's summary table (``{"columns", "rows"}``), status cells coloured like the claims."""
    if not table:
        return ""
    head = "".join(f'<th class="l">{esc(c)}</th>' for c in table["columns"])
    body = "".join("<tr>" + "".join(
        f'<td class="l"' + (f' style="background:{STATUS_COLOUR[str(x)]}"><b>{esc(x)}</b>' if str(x) in STATUS_COLOUR
                            else f">{esc(x)}") + "</td>" for x in row) + "</tr>" for row in table["rows"])
    return (f'<div class="scroll"><table id="summary-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _seeds(result: dict[str, Any]) -> str:
    items = []
    for label, r in result["runs"].items():
        t, s = r["train_config"], r["sweep_config"]
        items.append(f"<li>{esc(label)}: training seed {esc(t.get('seed'))}, data split seed "
                     f"{esc((t.get('data') or {}).get('seed'))}, calibration seed "
                     f"{esc((s.get('calibration') or {}).get('seed'))}</li>")
    items.append(f"<li>bootstrap: {N_BOOT} resamples of the evaluation blocks, seed 0, {int(100 * CONFIDENCE)} % "
                 "percentile intervals</li>")
    return "<ul>" + "".join(items) + "</ul>"


def render(result: dict[str, Any], figs: list[FigureOut], records: list[dict[str, Any]],
           trajs: dict[str, dict[str, Any]], page_dir: Path = Path(".")) -> str:
    body = [f"<h1>qrobust reproduce: {esc(result['experiment'])}</h1>",
            f"<p><b>Finding under test:</b> {esc(result['finding'])}</p>",
            f"<p class=\"meta\">Scale {esc(result['scale'])}"
            + (f", model preset {esc(result['model'])}" if result.get("model") else "")
            + f"; training {result['train_s']:.0f} s, sweeps {result['sweep_s']:.0f} s (this invocation; "
            f"work already done is reused); created {esc(result['created'])}.</p>",
            "<h2>Verdict</h2>", f"<p id=\"summary\">{esc(result['summary'])}</p>",
            f"<p class=\"meta\">{esc(noise_note(result))}</p>",
            table_html(result.get("table")), _claims_html(result["claims"]), paper_html(result),
            "<h2>Figures</h2>" + (figures_html(figs) or "<p>No figures.</p>"),
            "<h2>Runs</h2><ul>" + "".join(
                f"<li>{esc(lbl)}: run <code>{esc(r['train_config']['out'])}</code>, results "
                f"<code>{esc(r['sweep_config']['out'])}</code>, full report <a href=\"{esc(_rel(r['report'], page_dir))}\">"
                f"{esc(r['report'])}</a></li>" for lbl, r in result["runs"].items()) + "</ul>",
            "<h2>Provenance</h2>", "<h3>Seeds</h3>" + _seeds(result),
            "<h3>Experiment file</h3>" f"<pre>{esc(result['spec_yaml'])}</pre>",
            "<h3>This invocation</h3>" + pre(result["versions"]),
            provenance_html(records, trajs, [r["sweep_config"] for r in result["runs"].values()])]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>qrobust reproduce {esc(result['experiment'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _rel(path: str, page_dir: Path) -> str:
    """Link target relative to the page (OUT/<name>/index.html), so the folder can be moved whole."""
    try:
        return os.path.relpath(Path(path).resolve(), page_dir.resolve())
    except ValueError:
        return str(path)


def write_page(result: dict[str, Any], figs: list[FigureOut], records: list[dict[str, Any]],
               trajs: dict[str, dict[str, Any]], path: Path) -> Path:
    page = render(result, figs, records, trajs, path.parent)
    write_text(path, page)
    os.chmod(path, 0o644)
    return path


def write_index(out: Path) -> Path:
    """``OUT/index.html``: every experiment reproduced into ``out`` so far, its finding, its verdict per
    claim and a link to its page (rebuilt from the ``verdict.json`` files, so it accumulates across calls)."""
    import json
    import warnings

    from ...errors import QrobustWarning
    rows = []
    for vf in sorted(out.glob("*/verdict.json")):
        try:
            v = json.loads(vf.read_text())
            cells = "".join(
                f'<li style="background:{STATUS_COLOUR.get(c["status"], "#fff")}"><b>{esc(c["status"])}</b>'
                f' — {esc(c["cell"])}: {esc(c["claim"])} ({c["n_expected_direction"]}/{c["n"]} in the expected '
                f'direction, {c["n_for"]} resolved for, {c["n_against"]} against)</li>' for c in v["claims"])
            rows.append(f'<h2><a href="{esc(vf.parent.name)}/index.html">{esc(v["experiment"])}</a></h2>'
                        f'<p><b>Finding under test:</b> {esc(v["finding"])}</p><p class="meta">scale '
                        f'{esc(v["scale"])}, created {esc(v["created"])}</p><ul>{cells}</ul>')
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            why = "not valid JSON" if isinstance(e, ValueError) else (
                e.strerror if isinstance(e, OSError) else "not a verdict qrobust wrote")
            warnings.warn(f"skipped '{vf}' in the index: {why}; reproduce that experiment again to rewrite it",
                          QrobustWarning, stacklevel=2)
    body = "\n".join(rows) or '<p class="empty">No experiment has finished here yet.</p>'
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>qrobust reproduce</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>qrobust reproduce</h1>\n{body}\n</body>\n</html>\n")
    path = out / "index.html"
    write_text(path, page)
    os.chmod(path, 0o644)
    return path
