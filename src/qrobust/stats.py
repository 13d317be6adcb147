"""Honest uncertainty for ΔQ L: a paired bootstrap over evaluation blocks, and comparisons of two ΔQ Ls.

A record stores the summed NLL of every evaluation block for the FP and the quantized model. Blocks are
the unit of resampling: a bootstrap sample draws n block indices with replacement and uses the *same*
indices for both models (paired), so the noise both share — which text is hard — cancels in the ratio
ΔQ L* = Σ nll_q[idx] / Σ nll_fp[idx] − 1 (every block has the same number of target tokens). The interval
is the percentile interval of ΔQ L*. Comparing two records evaluated on the same blocks (one eval set)
also resamples the same indices for both (paired); on different blocks they are resampled independently.
Seeds are fixed, so the numbers are reproducible.

This module is the arithmetic on arrays of block NLLs; comparing two stored records (which blocks, which eval
set, which checkpoints bracket an FP loss) is :mod:`qrobust.results.compare`.
"""
from __future__ import annotations

from typing import Any

import numpy as np


N_BOOT = 2000
CONFIDENCE = 0.95


def indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def dq_samples(fp: np.ndarray, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return q[idx].sum(axis=1) / fp[idx].sum(axis=1) - 1.0


def dq_interval(nll_fp: list[float] | np.ndarray, nll_q: list[float] | np.ndarray, n_boot: int = N_BOOT,
                confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, float]:
    """ΔQ L with its paired-bootstrap percentile interval and standard error."""
    fp, q = np.asarray(nll_fp, dtype=np.float64), np.asarray(nll_q, dtype=np.float64)
    dq = float(q.sum() / fp.sum() - 1.0)
    if fp.size < 2:
        return {"dq": dq, "low": float("nan"), "high": float("nan"), "se": float("nan"), "n_blocks": int(fp.size),
                "n_boot": 0, "confidence": confidence}
    s = dq_samples(fp, q, indices(fp.size, n_boot, seed))
    a = (1 - confidence) / 2
    return {"dq": dq, "low": float(np.quantile(s, a)), "high": float(np.quantile(s, 1 - a)),
            "se": float(s.std(ddof=1)), "n_blocks": int(fp.size), "n_boot": n_boot, "confidence": confidence}


def difference(point: float, diff: np.ndarray, confidence: float, paired: bool, n_boot: int) -> dict[str, Any]:
    """The comparison result: point difference, its percentile interval, p(difference ≤ 0), and how it was drawn."""
    al = (1 - confidence) / 2
    lo, hi = float(np.quantile(diff, al)), float(np.quantile(diff, 1 - al))
    return {"diff": float(point), "low": lo, "high": hi, "p_greater": float((diff <= 0).mean()), "greater": lo > 0,
            "paired": paired, "n_boot": n_boot, "confidence": confidence}


def crossing(losses: list[float], level: float) -> tuple[int, float] | None:
    """Where a run's FP loss first falls to ``level``: ``(i, w)`` with
    ``level = (1 − w)·losses[i] + w·losses[i + 1]`` (``losses`` in step order), or None if it never does."""
    for i in range(len(losses) - 1):
        hi, lo = losses[i], losses[i + 1]
        if hi >= level >= lo and hi > lo:
            return i, (hi - level) / (hi - lo)
    return None
