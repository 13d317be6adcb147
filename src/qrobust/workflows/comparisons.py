"""Cooldown endpoints vs the constant-LR control, computed from records: the pairs the demo's table shows
and the reproduction's ``cooldown`` verdict judges. Shared here so neither workflow imports the other."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..errors import QrobustError
from ..results.compare import compare_dq
from ..results.records import VariantRecord, variant_records


def stable_vs_decay(records: Iterable[VariantRecord | Mapping[str, Any]], samples: bool = False) -> list[dict[str, Any]]:
    """For each branch endpoint and variant: ΔQ L of the decayed model vs the constant-LR control at the same step
    (``samples``: keep each comparison's bootstrap replicates, for pooling over seeds)."""
    recs = variant_records(records)
    by = {(r.checkpoint.run, r.checkpoint.step, r.variant.label): r for r in recs}
    ends: dict[str, int] = {}
    for r in recs:
        run = r.checkpoint.run
        if run != "main":
            ends[run] = max(ends.get(run, 0), r.checkpoint.step)
    rows = []
    for (run, step, label), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        if run == "main" or step != ends[run]:
            continue
        ctrl = by.get(("main", step, label))
        start = by.get(("main", r.checkpoint.parent_step, label))
        if ctrl is None:
            continue
        rows.append({"branch": run, "step": step, "variant": label, "method": r.variant.method,
                     "bits": r.variant.bits, "from_step": r.checkpoint.parent_step,
                     "loss_fp_decay": r.metrics.loss_fp, "loss_fp_control": ctrl.metrics.loss_fp,
                     "dq_decay": r.metrics.dq_rel, "dq_control": ctrl.metrics.dq_rel,
                     "dq_branch_start": start.metrics.dq_rel if start else None,
                     "decay_vs_control": _compare(r, ctrl, samples)})
    return rows


def _compare(a: VariantRecord, b: VariantRecord, samples: bool = False) -> dict[str, Any] | None:
    """Paired bootstrap of ΔQ L(a) − ΔQ L(b) over the shared evaluation blocks; None without block losses."""
    try:
        return compare_dq(a, b, samples=samples)
    except QrobustError:
        return None
