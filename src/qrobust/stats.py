"""Honest uncertainty for ΔQ L: a paired bootstrap over evaluation blocks, and comparisons of two ΔQ Ls.

A record stores the summed NLL of every evaluation block for the FP and the quantized model. Blocks are
the unit of resampling: a bootstrap sample draws n block indices with replacement and uses the *same*
indices for both models (paired), so the noise both share — which text is hard — cancels in the ratio
ΔQ L* = Σ nll_q[idx] / Σ nll_fp[idx] − 1 (every block has the same number of target tokens). The interval
is the percentile interval of ΔQ L*. Comparing two records evaluated on the same blocks (one eval set)
also resamples the same indices for both (paired); on different blocks they are resampled independently.
Seeds are fixed, so the numbers are reproducible.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import QrobustError

N_BOOT = 2000
CONFIDENCE = 0.95


def _blocks(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    b = rec.get("blocks") or {}
    fp, q = np.asarray(b.get("nll_fp") or [], dtype=np.float64), np.asarray(b.get("nll_q") or [], dtype=np.float64)
    if fp.size == 0 or fp.shape != q.shape:
        raise QrobustError("record has no per-block losses to resample (written by an old qrobust?); re-run the sweep")
    return fp, q


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _dq_samples(fp: np.ndarray, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return q[idx].sum(axis=1) / fp[idx].sum(axis=1) - 1.0


def dq_interval(nll_fp: list[float] | np.ndarray, nll_q: list[float] | np.ndarray, n_boot: int = N_BOOT,
                confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, float]:
    """ΔQ L with its paired-bootstrap percentile interval and standard error."""
    fp, q = np.asarray(nll_fp, dtype=np.float64), np.asarray(nll_q, dtype=np.float64)
    dq = float(q.sum() / fp.sum() - 1.0)
    if fp.size < 2:
        return {"dq": dq, "low": float("nan"), "high": float("nan"), "se": float("nan"), "n_blocks": int(fp.size),
                "n_boot": 0, "confidence": confidence}
    s = _dq_samples(fp, q, _indices(fp.size, n_boot, seed))
    a = (1 - confidence) / 2
    return {"dq": dq, "low": float(np.quantile(s, a)), "high": float(np.quantile(s, 1 - a)),
            "se": float(s.std(ddof=1)), "n_blocks": int(fp.size), "n_boot": n_boot, "confidence": confidence}


def record_interval(rec: dict[str, Any], **kw: Any) -> dict[str, float]:
    """The stored interval of a record when it has one, else computed from its per-block losses."""
    ci = (rec.get("metrics") or {}).get("dq_ci")
    if isinstance(ci, dict) and not kw:
        return ci
    fp, q = _blocks(rec)
    return dq_interval(fp, q, **kw)


def compare_dq(a: dict[str, Any], b: dict[str, Any], n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
               seed: int = 0) -> dict[str, Any]:
    """Is ΔQ L of record ``a`` greater than of record ``b``?

    Returns the difference ΔQ L(a) − ΔQ L(b), its bootstrap interval, ``p_greater`` (the bootstrap
    probability that the difference is ≤ 0: small means a > b is well supported), ``greater`` (the
    interval lies above 0) and whether the resampling was paired (same eval blocks)."""
    fa, qa = _blocks(a)
    fb, qb = _blocks(b)
    ea, eb = (a.get("eval_set") or {}).get("id"), (b.get("eval_set") or {}).get("id")
    paired = ea is not None and ea == eb and fa.size == fb.size
    ia = _indices(fa.size, n_boot, seed)
    ib = ia if paired else _indices(fb.size, n_boot, seed + 1)
    diff = _dq_samples(fa, qa, ia) - _dq_samples(fb, qb, ib)
    point = float((qa.sum() / fa.sum()) - (qb.sum() / fb.sum()))
    al = (1 - confidence) / 2
    lo, hi = float(np.quantile(diff, al)), float(np.quantile(diff, 1 - al))
    return {"diff": point, "low": lo, "high": hi, "p_greater": float((diff <= 0).mean()), "greater": lo > 0,
            "paired": paired, "n_boot": n_boot, "confidence": confidence}
