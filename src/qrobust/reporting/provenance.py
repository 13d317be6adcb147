"""The provenance part of a page: software versions, eval sets, calibration, variants, trajectories (runs,
schedules, training config, open-model preset), sweep configs and seeds, and when and where records were made."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any, Callable, Iterable

from ..results.records import VariantRecord
from ..results.records import variant_records
from .markup import esc, fmt, pre

EVAL_SET_FIELDS = ("id", "corpus", "split", "n_blocks", "seq_len", "n_tokens")
VARIANT_FIELDS = ("label", "method", "bits", "group_size", "sym", "include", "exclude", "options")


def _counted(values: Iterable[Any]) -> list[tuple[Any, int]]:
    """Distinct JSON values with how many records carry each, in first-seen order."""
    c = Counter(json.dumps(v, sort_keys=True, default=str) for v in values)
    return [(json.loads(k), n) for k, n in c.items()]


def _cell(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, (list, dict)) else fmt(v, "s")


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[dict[str, Any], int]],
           cell: Callable[[Any], str]) -> list[str]:
    """Lines of a table of distinct values (one column per field) with how many records carry each."""
    out = [f"<h3>{title}</h3><table><thead><tr>" + "".join(f"<th>{h}</th>" for h in columns)
           + "<th>records</th></tr></thead><tbody>"]
    for v, n in rows:
        out.append("<tr>" + "".join(f"<td>{esc(cell(v.get(k)))}</td>" for k in columns) + f"<td>{n}</td></tr>")
    return out + ["</tbody></table>"]


def _records_html(records: list[VariantRecord]) -> list[str]:
    out = ["<h3>Software versions</h3>"]
    for v, n in _counted(r.versions for r in records):
        out.append(f"<p>{n} record(s):</p>{pre(v)}")
    out += _table("Eval sets", EVAL_SET_FIELDS, _counted(asdict(r.eval_set) for r in records), lambda v: fmt(v, "s"))
    out[-1] += "<h3>Calibration</h3>"
    cals = [(c, n) for c, n in _counted(r.calibration for r in records) if c]
    if not cals:
        out.append("<p>No calibration data used (all variants are data-free).</p>")
    for c, n in cals:
        out.append(f"<p>{n} record(s):</p>{pre(c)}")
    out += _table("Quantization variants", VARIANT_FIELDS, _counted(asdict(r.variant) for r in records), _cell)
    return out


def _trajectory_html(name: str, t: dict[str, Any]) -> list[str]:
    """One stored trajectory file (JSON as stored, so its parts are checked here)."""
    runs = t.get("runs") if isinstance(t.get("runs"), dict) else {}
    out = [f"<h4>{esc(name)}</h4><p>{len(t.get('checkpoints') or [])} checkpoint(s), {len(runs)} run(s).</p>"]
    for rn, r in runs.items():
        r = r if isinstance(r, dict) else {}
        out.append(f"<p>Run <b>{esc(rn)}</b>: parent {esc(r.get('parent') or '—')}, "
                   f"from step {esc(r.get('from_step') if r.get('from_step') is not None else '—')}, "
                   f"tokens/step {esc(r.get('tokens_per_step') or '—')}; schedule:</p>{pre(r.get('schedule'))}")
    data, tcfg = t.get("data"), t.get("config")
    if isinstance(tcfg, dict):
        out.append(f"<p>Training config (seed {esc(tcfg.get('seed'))}, data split seed "
                   f"{esc((tcfg.get('data') or {}).get('seed'))}):</p>{pre(tcfg)}")
    else:
        out.append(f"<p>Data config:</p>{pre(data)}" if data else "<p>Data config: not recorded.</p>")
    prov = t.get("provenance")
    if isinstance(prov, dict):
        out.append(f"<p>Open-model preset <b>{esc(prov.get('preset'))}</b>; uncertain:</p>"
                   f"{pre(prov.get('uncertain'))}")
    return out


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
        out.append(f"<p>Trajectory <code>{esc(c.get('trajectory'))}</code>: {', '.join(seeds)}.</p>{pre(c)}")
    out.append(f"<p class=\"meta\">Intervals: paired bootstrap, {N_BOOT} resamples of the evaluation blocks, seed 0, "
               f"{int(100 * CONFIDENCE)} % percentile intervals.</p>")
    return "\n".join(out)


def provenance_html(records: Iterable[Any], trajs: dict[str, dict[str, Any]],
                    configs: list[dict[str, Any]] | None = None) -> str:
    """Everything needed to tell how the records were made; ``records``: typed variant records (or dicts)."""
    recs = variant_records(records)
    out = _records_html(recs) + ["<h3>Trajectories</h3>"]
    if not trajs:
        out.append("<p>No trajectory files stored.</p>")
    for name, t in trajs.items():
        out += _trajectory_html(name, t)
    if configs is not None:
        out.append(_sweep_configs_html(configs))
    hosts = sorted({str(r.host) for r in recs if r.host})
    created = sorted(str(r.created) for r in recs if r.created)
    if created:
        out.append(f"<p class=\"meta\">Records created {esc(created[0])} … {esc(created[-1])} "
                   f"on host(s): {esc(', '.join(hosts) or '—')}.</p>")
    return "\n".join(out)
