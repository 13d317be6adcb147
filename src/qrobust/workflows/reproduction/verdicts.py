"""Verdicts computed from the stored records: every claim of a finding is a set of paired-bootstrap
comparisons, and its status follows from how many point the expected way and how many are resolved.

A comparison is *resolved* when the 95 % interval of the difference excludes 0. Rules:

- ``greater`` claims (ΔQ L of A is above B's): **reproduces** when every comparison points the expected way
  and at least half are resolved; **not reproduced** when none is resolved the expected way, or more are
  resolved against than for; **partly** otherwise.
- ``not_worse`` claims (LAWA matches or beats decay): **reproduces** when none is resolved against;
  **not reproduced** when more than half are; **partly** otherwise.

The intervals cover evaluation noise (which text was drawn), not training noise (another seed).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

from ...errors import QrobustError
from ...stats import compare_dq, compare_dq_at_fp_loss, compare_loss

Records = list[dict[str, Any]]


def _label(r: dict[str, Any]) -> str:
    return str((r.get("variant") or {}).get("label"))


def by_variant(records: Records) -> dict[str, Records]:
    """Records with metrics and per-block losses per variant label, keeping the eval set most of them use
    (a results folder can hold records of an older eval setting)."""
    out: dict[str, Records] = {}
    usable = [r for r in records if (r.get("metrics") or {}).get("dq_rel") is not None and r.get("blocks")]
    for label in sorted({_label(r) for r in usable}):
        rs = [r for r in usable if _label(r) == label]
        common = Counter((r.get("eval_set") or {}).get("id") for r in rs).most_common(1)[0][0]
        out[label] = [r for r in rs if (r.get("eval_set") or {}).get("id") == common]
    return out


def _comparison(what: str, a: str, b: str, res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"what": what, "a": a, "b": b, **{k: res[k] for k in ("diff", "low", "high", "paired")}, **extra,
            "for": res["low"] > 0, "against": res["high"] < 0}


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
    if all(c["diff"] > 0 for c in comps) and n_for >= math.ceil(n / 2):
        return "reproduces"
    if n_for == 0 or n_against > n_for:
        return "not reproduced"
    return "partly"


def claim(text: str, kind: str, cell: str, comps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"claim": text, "kind": kind, "cell": cell, "status": judge(kind, comps), "n": len(comps),
            "n_expected_direction": sum(c["diff"] > 0 for c in comps), "n_for": sum(c["for"] for c in comps),
            "n_against": sum(c["against"] for c in comps), "comparisons": comps}


# -- F2: cooldowns vs the constant-LR control -------------------------------------------------------------
def _branches(runs_meta: dict[str, dict[str, Any]]) -> list[str]:
    return [n for n, m in runs_meta.items() if m.get("parent") == "main" and m.get("from_step") is not None
            and not m.get("averaged")]


def _at(recs: Records, run: str) -> dict[int, dict[str, Any]]:
    return {r["checkpoint"]["step"]: r for r in recs if r["checkpoint"].get("run") == run}


def cooldown(stores: dict[str, tuple[Records, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant: ΔQ L at the end of every cooldown vs the constant-LR run at the same step (the pairs
    the demo's summary makes, averaged runs left out)."""
    from ..demo import stable_vs_decay
    claims = []
    for run_label, (records, runs_meta) in stores.items():
        keep = set(_branches(runs_meta)) | {"main"}
        for cell, recs in by_variant(records).items():
            rows = stable_vs_decay([r for r in recs if r["checkpoint"].get("run") in keep])
            comps = [_comparison(f"cooldown from step {row['from_step']} vs constant LR at step {row['step']}",
                                 row["branch"], "main", row["decay_vs_control"], step=row["step"],
                                 from_step=row["from_step"], dq_a=row["dq_decay"], dq_b=row["dq_control"],
                                 loss_fp_a=row["loss_fp_decay"], loss_fp_b=row["loss_fp_control"])
                     for row in sorted(rows, key=lambda row: row["from_step"]) if row["decay_vs_control"]]
            claims.append(claim("ΔQ L at the end of a cooldown is above the constant-LR run's at the same step",
                                "greater", cell, comps))
    return claims


# -- F4: LAWA vs decay and vs the constant-LR run -----------------------------------------------------------
def averaging(stores: dict[str, tuple[Records, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant, at every cooldown endpoint: LAWA of the constant-LR run vs the cooldown and vs the
    constant-LR checkpoint at the same step."""
    claims = []
    for run_label, (records, runs_meta) in stores.items():
        lawa = [n for n, m in runs_meta.items() if (m.get("averaged") or {}).get("averager") == "lawa"
                and m.get("parent") == "main"]
        if not lawa:
            raise QrobustError(f"run '{run_label}' has no LAWA of its constant-LR run in its results; "
                               "the experiment's sweep needs an 'average: [{averager: lawa, runs: [main]}]' entry")
        avg = lawa[0]
        for cell, recs in by_variant(records).items():
            main, av = _at(recs, "main"), _at(recs, avg)
            loss_c, dq_decay, dq_main = [], [], []
            for br in sorted(_branches(runs_meta), key=lambda n: runs_meta[n]["from_step"]):
                mine = _at(recs, br)
                if not mine or max(mine) not in av:
                    continue
                s = max(mine)
                d, a = mine[s], av[s]
                info = {"step": s, "from_step": runs_meta[br]["from_step"],
                        "loss_q_decay": d["metrics"]["loss_q"], "loss_q_lawa": a["metrics"]["loss_q"],
                        "loss_fp_decay": d["metrics"]["loss_fp"], "loss_fp_lawa": a["metrics"]["loss_fp"],
                        "dq_decay": d["metrics"]["dq_rel"], "dq_lawa": a["metrics"]["dq_rel"]}
                loss_c.append(_comparison(f"quantized loss, cooldown from {info['from_step']} − {avg}, step {s}",
                                          br, avg, compare_loss(d, a, "q"), unit="nats", **info))
                dq_decay.append(_comparison(f"ΔQ L, cooldown from {info['from_step']} − {avg}, step {s}",
                                            br, avg, compare_dq(d, a), **info))
                if s in main:
                    c = main[s]
                    dq_main.append(_comparison(f"ΔQ L, constant LR − {avg}, step {s}", "main", avg, compare_dq(c, a),
                                               step=s, dq_main=c["metrics"]["dq_rel"], dq_lawa=a["metrics"]["dq_rel"],
                                               loss_fp_main=c["metrics"]["loss_fp"],
                                               loss_fp_lawa=a["metrics"]["loss_fp"]))
            claims.append(claim(f"quantized loss of {avg} matches or beats the cooldown ending at the same step",
                                "not_worse", cell, loss_c))
            claims.append(claim(f"ΔQ L of {avg} is below the constant-LR run's at the same step",
                                "greater", cell, dq_main))
            claims.append(claim(f"ΔQ L of {avg} is below the cooldown's ending at the same step",
                                "greater", cell, dq_decay))
    return claims


# -- F3 / weight decay: ΔQ L at equal FP loss -------------------------------------------------------------
def fp_levels(a: Records, b: Records, n: int) -> list[float]:
    """``n`` FP-loss levels both runs pass through: evenly spaced over the lower half of the overlap of
    their FP-loss ranges (the upper half is the first rapid phase, where ΔQ L is ≈ 0 for every run)."""
    la = [r["metrics"]["loss_fp"] for r in a]
    lb = [r["metrics"]["loss_fp"] for r in b]
    lo, hi = max(min(la), min(lb)), min(max(la), max(lb))
    if hi <= lo:
        return []
    top = lo + (hi - lo) / 2
    return [lo + (top - lo) * (k + 0.5) / n for k in range(n)]


def equal_fp_loss(stores: dict[str, tuple[Records, dict[str, Any]]], order: list[str], n_levels: int,
                  label_of: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """Per variant and pair of neighbouring runs in ``order`` (expected: ΔQ L falls along it): ΔQ L of both
    where their main runs reach the same FP loss. One claim per pair, so a finding that holds up to some
    learning rate and breaks beyond it says so."""
    per_run = {lbl: by_variant(stores[lbl][0]) for lbl in order}
    cells = sorted(set.intersection(*(set(v) for v in per_run.values())))
    claims = []
    for cell in cells:
        for x, y in zip(order, order[1:]):
            a = sorted((r for r in per_run[x][cell] if r["checkpoint"].get("run") == "main"),
                       key=lambda r: r["checkpoint"]["step"])
            b = sorted((r for r in per_run[y][cell] if r["checkpoint"].get("run") == "main"),
                       key=lambda r: r["checkpoint"]["step"])
            comps = []
            for level in fp_levels(a, b, n_levels):
                res = compare_dq_at_fp_loss(a, b, level)
                comps.append(_comparison(f"ΔQ L at FP loss {level:.3f}: {x} − {y}", x, y, res, level=level,
                                         dq_a=res["dq_a"], dq_b=res["dq_b"], at_a=res["at_a"], at_b=res["at_b"]))
            claims.append(claim(f"ΔQ L at equal FP loss is lower for {label_of(y)} than for {label_of(x)}",
                                "greater", cell, comps))
    return claims
