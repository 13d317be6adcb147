"""The report's "Where the time went" section: per variant, the mean seconds per checkpoint spent on
calibration, quantizing and evaluating, beside the shared per-checkpoint load and FP evaluation; read
only from the records' timings (``results/timings.py`` defines the phases)."""
from __future__ import annotations

from statistics import mean

from ..results.records import VariantRecord
from ..results.timings import PHASE_NAMES, variant_phases
from .markup import esc


def timings_section(records: list[VariantRecord]) -> str | None:
    """The section's HTML; None when no record carries timings."""
    timed = [r for r in records if r.timings]
    if not timed:
        return None
    per_ck: dict[tuple, dict[str, float]] = {}
    by_variant: dict[str, list[dict[str, float]]] = {}
    for r in timed:
        ck = (r.trajectory, r.checkpoint.name)
        per_ck.setdefault(ck, {"load": float(r.timings.get("load_s") or 0.0),
                               "fp_eval": float(r.timings.get("fp_eval_s") or 0.0)})
        v = r.variant
        by_variant.setdefault(v.label or f"{v.method}-w{v.bits}g{v.group_size}", []).append(variant_phases(r.timings))
    shared = (f"<p class=\"meta\">Per checkpoint ({len(per_ck)}), shared by its variants: load "
              f"{mean(c['load'] for c in per_ck.values()):.2f} s, FP evaluation "
              f"{mean(c['fp_eval'] for c in per_ck.values()):.2f} s (means).</p>")
    phases = ("calibration", "quantize", "eval")
    head = "<th class=\"l\">variant</th><th>records</th>" + "".join(
        f"<th>{esc(PHASE_NAMES[p])} s / checkpoint</th>" for p in phases) + "<th>total s</th>"
    rows = []
    for label, ts in sorted(by_variant.items()):
        cells = "".join(f"<td>{mean(t[p] for t in ts):.2f}</td>" for p in phases)
        total = sum(sum(t.values()) for t in ts)
        rows.append(f"<tr><td class=\"l\">{esc(label)}</td><td>{len(ts)}</td>{cells}<td>{total:.1f}</td></tr>")
    return ("<h2>Where the time went</h2><p class=\"meta\">Calibration: building the calibration tokens and the "
            "method's forward passes over them; quantize: the method's own work; eval: the quantized model's "
            "evaluation. From the records' timings.</p>" + shared
            + f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")

