"""The rules of a verdict: every claim of a finding is a set of paired-bootstrap
comparisons, and its status follows from how many point the expected way and how many are resolved.

A comparison is *resolved* when the 95 % interval of the difference excludes 0. Rules:

- ``greater`` claims (ΔQ L of A is above B's): **reproduces** when every comparison points the expected way
  and at least half are resolved; **not reproduced** when none is resolved the expected way, or more are
  resolved against than for; **partly** otherwise.
- ``not_worse`` claims (LAWA matches or beats decay): **reproduces** when none is resolved against;
  **not reproduced** when more than half are; **partly** otherwise.

With one training seed the intervals cover evaluation noise (which text was drawn) only. With several
(``--seeds N``), :mod:`.seeds` pools each comparison over the seeds (an interval with both training and
evaluation noise), and a comparison points "the expected way" only when it does in every seed.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

from ...results.records import VariantRecord, variant_records

Records = list[VariantRecord]
Stores = dict[str, tuple[Records, dict[str, Any]]]  # run label -> (its records, its runs' metadata)


def label_of(r: VariantRecord) -> str:
    return str(r.variant.label)


def by_variant(records: Iterable[VariantRecord | Mapping[str, Any]]) -> dict[str, Records]:
    """Records with metrics and per-block losses per variant label, keeping the eval set most of them use
    (a results folder can hold records of an older eval setting)."""
    out: dict[str, Records] = {}
    usable = [r for r in variant_records(records) if r.metrics.dq_rel is not None and r.blocks.nll_fp]
    for label in sorted({label_of(r) for r in usable}):
        rs = [r for r in usable if label_of(r) == label]
        common = Counter(r.eval_set.id for r in rs).most_common(1)[0][0]
        out[label] = [r for r in rs if r.eval_set.id == common]
    return out


def comparison(what: str, a: str, b: str, res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One compared difference A − B. When ``res`` carries its bootstrap replicates (``samples``, drawn with
    the shared block indices), they ride along under ``_boot`` for pooling over seeds, and are dropped
    before anything is written (:func:`.seeds.pool_claims`)."""
    out = {"what": what, "a": a, "b": b, **{k: res[k] for k in ("diff", "low", "high", "paired")}, **extra,
           "for": res["low"] > 0, "against": res["high"] < 0}
    if "samples" in res:
        out["_boot"] = (res["samples"], res["n_blocks"])
    return out


def expected_way(c: dict[str, Any]) -> bool:
    """The comparison points the expected way (A − B > 0): pooled, and in every seed when it has several."""
    return c["diff"] > 0 and all(s["diff"] > 0 for s in c.get("seeds", ()))


def fmt_diff(k: dict[str, Any]) -> str:
    """A comparison's difference and interval: nats for losses, percentage points for ΔQ L."""
    if k.get("unit") == "nats":
        return f"{k['diff']:+.4f} [{k['low']:+.4f}, {k['high']:+.4f}] nats"
    return f"{100 * k['diff']:+.3f} [{100 * k['low']:+.3f}, {100 * k['high']:+.3f}] points"


def judge(kind: str, comps: list[dict[str, Any]]) -> str:
    n = len(comps)
    if n == 0:
        return "no data"
    n_for, n_against = sum(c["for"] for c in comps), sum(c["against"] for c in comps)
    if kind == "not_worse":
        return "reproduces" if n_against == 0 else "not reproduced" if n_against > n / 2 else "partly"
    if all(expected_way(c) for c in comps) and n_for >= math.ceil(n / 2):
        return "reproduces"
    if n_for == 0 or n_against > n_for:
        return "not reproduced"
    return "partly"


def claim(text: str, kind: str, cell: str, comps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"claim": text, "kind": kind, "cell": cell, "status": judge(kind, comps), "n": len(comps),
            "n_expected_direction": sum(expected_way(c) for c in comps), "n_for": sum(c["for"] for c in comps),
            "n_against": sum(c["against"] for c in comps), "comparisons": comps}
