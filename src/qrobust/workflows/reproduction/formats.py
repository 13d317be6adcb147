"""The ``formats`` verdict: F2 (cooldown vs constant LR at equal tokens) and F4 (LAWA vs the raw
constant-LR endpoint) judged for every variant of a sweep that names number formats, and one table with a
row per format × method, so "does LR decay hurt MXFP4 as it hurts int3 GPTQ?" reads off one line.

The claims are the ``cooldown`` and ``averaging`` kinds' own (same rules, same comparisons); this module
only tags them, lays them out per format, and refuses an experiment that could not fill the table.
"""
from __future__ import annotations

from typing import Any

from ...config import SweepConfig, parse_config
from ...errors import ConfigError
from ...quant import QuantSpec
from .claims import fmt_diff
from .seeds import signs

# (claim key, column heading): the claims the table shows, in column order
COLUMNS = [("cooldown_vs_constant", "F2: ΔQ L, cooldown end − constant LR (same step)"),
           ("constant_vs_lawa", "F4: ΔQ L, constant LR − LAWA (same step)"),
           ("loss_vs_cooldown", "F4: quantized loss, cooldown − LAWA (nats)")]


def sweep_of(spec: Any, what: str = "") -> SweepConfig:
    """The experiment's sweep as validated config (the trajectory is filled in per run later)."""
    return parse_config(SweepConfig, {**spec.sweep, "trajectory": "-"}, what or f"sweep of experiment '{spec.name}'")


def format_rows(spec: Any) -> list[tuple[str, str, str]]:
    """(format as the config names it, method, variant label) per variant, formats outermost, in the
    config's order: the labels are the records' (``gptq-w3g128`` for ``int3-g128``, ``rtn-nvfp4``)."""
    cfg = sweep_of(spec)
    common = dict(sym=cfg.sym, include=tuple(cfg.include), exclude=tuple(cfg.exclude))
    rows = []
    for f in cfg.formats:
        for m, opts in cfg.method_specs():
            opt = tuple(sorted(opts.items()))
            label = QuantSpec(method=m, format=f, options=opt, **common).label  # type: ignore[arg-type]
            rows.append((f, m + "".join(f" {k}={v}" for k, v in opt), label))
    return rows


def check_formats(spec: Any, what: str) -> None:
    """The table needs named formats, a cooldown to compare and a LAWA of the constant-LR run."""
    cfg = sweep_of(spec, what)
    if not cfg.formats:
        raise ConfigError(f"{what}: the formats verdict needs 'formats: [...]' in its sweep (e.g. [int4-g128, nvfp4])")
    if not any(a.averager == "lawa" and (a.runs is None or "main" in a.runs) for a in cfg.average):
        raise ConfigError(f"{what}: the formats verdict judges F4 too: add "
                          "'average: [{averager: lawa, runs: [main]}]' to its sweep")
    if not any(r.get("branches") or spec.base.get("branches") for r in spec.runs.values()):
        raise ConfigError(f"{what}: the formats verdict judges F2: give its run cooldown 'branches'")
    format_rows(spec)  # every format parses and every method takes it, before any training


def _diffs(claim: dict[str, Any]) -> str:
    """Each comparison of a claim: its step, difference and 95 % interval (pooled over seeds, then each seed's
    sign, when there are several)."""
    def one(k: dict[str, Any]) -> str:
        seeds = signs(k)
        return f"@{k['step']}: {fmt_diff(k).replace(' points', '').replace(' nats', '')}" + (f" ({seeds})" if seeds else "")
    return "; ".join(one(k) for k in claim["comparisons"]) or "–"


def formats_table(spec: Any, claims: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...]}``: per format × method, each column's status and
    differences (ΔQ L in percentage points, quantized loss in nats)."""
    by = {(c["cell"], c.get("key")): c for c in claims}
    columns = ["format", "method"]
    for _, head in COLUMNS:
        columns += [head, "verdict"]
    rows = []
    for fmt, method, label in format_rows(spec):
        row = [fmt, method]
        for key, _ in COLUMNS:
            c = by.get((label, key))
            row += [_diffs(c), c["status"]] if c else ["–", "no data"]
        rows.append(row)
    return {"columns": columns, "rows": rows}


def table_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown (for the README and ``OUT/<name>/table.md``)."""
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"
