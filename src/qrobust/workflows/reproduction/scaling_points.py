"""One variant's checkpoints as points of the scaling fits: tokens per parameter D/N, decay depth and ΔQ L
per record, the fixed weights that let every model size count alike, and block-bootstrap replicates.

N is the number of weights the sweep quantized (every linear layer of the blocks: the non-embedding
matrices; biases and norms, < 2 %, left out), read from the records, so it is right whatever ``--model``
chose; D is the checkpoint's tokens seen.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import QrobustError
from ...stats import indices
from .claims import Records
from .scaling_fits import Points


def quantized_weights(r: Any) -> int:
    """N of a record: the weights of the layers its sweep quantized."""
    layers = r.to_dict().get("layers") or {}
    n = sum(int(v.get("numel") or 0) for v in layers.values() if isinstance(v, dict))
    if n <= 0:
        raise QrobustError(f"record {r.key} has no per-layer weight counts (written by an old qrobust?); re-run the "
                           "sweep to fit ΔQ L against tokens per parameter")
    return n


def decay_depth(r: Any, peak: float) -> float:
    """1 − lr/peak inside a decay (0 at its start, 1 at its end for a decay to 0), else 0."""
    if r.checkpoint.phase != "decay" or not peak or r.checkpoint.lr is None:
        return 0.0
    return float(min(1.0, max(0.0, 1.0 - r.checkpoint.lr / peak)))


def _peak(runs_meta: dict[str, Any], recs: Records) -> float:
    sched = (runs_meta.get("main") or {}).get("schedule") or {}
    return float(sched.get("peak_lr") or max((r.checkpoint.lr or 0.0) for r in recs))


def size_rows(label: str, recs: Records, runs_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per checkpoint of one size (averaged runs and step 0 left out)."""
    averaged = {n for n, m in runs_meta.items() if m.get("averaged")}
    recs = [r for r in recs if r.checkpoint.run not in averaged and (r.checkpoint.tokens or 0) > 0]
    peak = _peak(runs_meta, recs) if recs else 0.0
    rows = []
    for r in sorted(recs, key=lambda r: (r.checkpoint.run, r.checkpoint.step)):
        depth = decay_depth(r, peak)
        n = quantized_weights(r)
        rows.append({"size": label, "run": r.checkpoint.run, "step": r.checkpoint.step, "n": n,
                     "x": r.checkpoint.tokens / n, "depth": depth, "dq": r.metrics.dq_rel,
                     "decayed": r.checkpoint.run != "main" or depth > 0, "record": r})
    return rows


def points(rows: list[dict[str, Any]], y: np.ndarray | None = None) -> Points:
    """The fit's arrays; weights rescale each size to the pooled mean |ΔQ L| so every size counts alike and
    errors stay in ΔQ L units; each decayed run is one held-out group."""
    yy = np.array([r["dq"] for r in rows], dtype=np.float64) if y is None else y
    base = np.array([r["dq"] for r in rows], dtype=np.float64)
    sizes = [r["size"] for r in rows]
    scale = {s: float(np.mean(np.abs(base[[i for i, t in enumerate(sizes) if t == s]]))) or 1.0 for s in set(sizes)}
    overall = float(np.mean(np.abs(base))) or 1.0
    keys = sorted({(r["size"], r["run"]) for r in rows if r["decayed"]})
    group = [keys.index((r["size"], r["run"])) if r["decayed"] else -1 for r in rows]
    return Points(np.array([r["x"] for r in rows]), np.array([r["n"] for r in rows], dtype=np.float64),
                  np.array([r["depth"] for r in rows]), yy, np.array([(overall / scale[s]) ** 2 for s in sizes]),
                  np.array(group))


def replicates(rows: list[dict[str, Any]], n_boot: int) -> np.ndarray:
    """(n_boot, n_rows) ΔQ L of every record on block-bootstrap replicates: one draw of block indices
    shared by every record (they share one eval set), so the block noise they have in common stays common."""
    fp = np.array([r["record"].blocks.nll_fp for r in rows], dtype=np.float64)
    q = np.array([r["record"].blocks.nll_q for r in rows], dtype=np.float64)
    idx = indices(fp.shape[1], n_boot, 0)
    return (q[:, idx].sum(axis=2) / fp[:, idx].sum(axis=2) - 1.0).T
