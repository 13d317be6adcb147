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


def _draws(a: dict[str, Any], b: dict[str, Any], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Block indices for resampling records ``a`` and ``b``: one draw for both when they share an eval
    set (paired), independent draws otherwise."""
    na, nb = _blocks(a)[0].size, _blocks(b)[0].size
    ea, eb = (a.get("eval_set") or {}).get("id"), (b.get("eval_set") or {}).get("id")
    paired = ea is not None and ea == eb and na == nb
    ia = _indices(na, n_boot, seed)
    return ia, ia if paired else _indices(nb, n_boot, seed + 1), paired


def compare_dq(a: dict[str, Any], b: dict[str, Any], n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
               seed: int = 0) -> dict[str, Any]:
    """Is ΔQ L of record ``a`` greater than of record ``b``?

    Returns the difference ΔQ L(a) − ΔQ L(b), its bootstrap interval, ``p_greater`` (the bootstrap
    probability that the difference is ≤ 0: small means a > b is well supported), ``greater`` (the
    interval lies above 0) and whether the resampling was paired (same eval blocks)."""
    fa, qa = _blocks(a)
    fb, qb = _blocks(b)
    ia, ib, paired = _draws(a, b, n_boot, seed)
    diff = _dq_samples(fa, qa, ia) - _dq_samples(fb, qb, ib)
    point = float((qa.sum() / fa.sum()) - (qb.sum() / fb.sum()))
    return _difference(point, diff, confidence, paired, n_boot)


def _loss_samples(rec: dict[str, Any], which: str, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss (nats/token) of record ``rec`` for the FP (``which="fp"``) or quantized model, and its
    bootstrap samples. Every block has the same number of target tokens, so the loss is the stored loss
    times the ratio of the resampled to the full mean block NLL."""
    fp, q = _blocks(rec)
    nll = fp if which == "fp" else q
    stored = (rec.get("metrics") or {}).get("loss_fp" if which == "fp" else "loss_q")
    mean = nll.mean()
    scale = float(stored) / mean if isinstance(stored, (int, float)) and mean > 0 else 1.0
    return float(mean * scale), nll[idx].mean(axis=1) * scale


def compare_loss(a: dict[str, Any], b: dict[str, Any], which: str = "q", n_boot: int = N_BOOT,
                 confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """Is the loss (quantized by default, ``which="fp"`` for full precision) of record ``a`` greater than
    of record ``b``? Same fields as :func:`compare_dq`; the difference is in nats per token."""
    ia, ib, paired = _draws(a, b, n_boot, seed)
    la, sa = _loss_samples(a, which, ia)
    lb, sb = _loss_samples(b, which, ib)
    return _difference(la - lb, sa - sb, confidence, paired, n_boot)


def _difference(point: float, diff: np.ndarray, confidence: float, paired: bool, n_boot: int) -> dict[str, Any]:
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


def _dq_at(recs: list[dict[str, Any]], level: float, idx: np.ndarray) -> tuple[float, np.ndarray, dict[str, Any]]:
    """ΔQ L interpolated linearly between the two checkpoints whose FP losses bracket ``level``, and its
    bootstrap samples (both checkpoints resampled with the same block indices; weights held fixed)."""
    losses = [float(r["metrics"]["loss_fp"]) for r in recs]
    where = crossing(losses, level)
    if where is None:
        raise QrobustError(f"FP loss {level:.4f} is outside the run's range [{min(losses):.4f}, {max(losses):.4f}]")
    i, w = where
    (f0, q0), (f1, q1) = _blocks(recs[i]), _blocks(recs[i + 1])
    point = (1 - w) * (q0.sum() / f0.sum() - 1) + w * (q1.sum() / f1.sum() - 1)
    samples = (1 - w) * _dq_samples(f0, q0, idx) + w * _dq_samples(f1, q1, idx)
    at = {"steps": [recs[i]["checkpoint"]["step"], recs[i + 1]["checkpoint"]["step"]], "weight": w}
    return float(point), samples, at


def compare_dq_at_fp_loss(a: list[dict[str, Any]], b: list[dict[str, Any]], level: float, n_boot: int = N_BOOT,
                          confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """Is ΔQ L of run ``a`` greater than of run ``b`` where both reach the FP loss ``level``?

    ``a`` and ``b`` are one variant's records of each run in step order. Each run's ΔQ L at ``level`` is
    interpolated between the two checkpoints whose FP losses bracket it; the bootstrap resamples blocks
    (the same indices for all four checkpoints when they share one eval set). Adds ``dq_a``, ``dq_b`` and
    where each was read (``at_a``, ``at_b``: the two steps and the interpolation weight)."""
    sizes = {_blocks(r)[0].size for r in a + b}
    ids = {(r.get("eval_set") or {}).get("id") for r in a + b}
    paired = len(sizes) == 1 and len(ids) == 1 and None not in ids
    n_a = _blocks(a[0])[0].size
    ia = _indices(n_a, n_boot, seed)
    ib = ia if paired else _indices(_blocks(b[0])[0].size, n_boot, seed + 1)
    da, sa, at_a = _dq_at(a, level, ia)
    db, sb, at_b = _dq_at(b, level, ib)
    out = _difference(da - db, sa - sb, confidence, paired, n_boot)
    return {**out, "level": level, "dq_a": da, "dq_b": db, "at_a": at_a, "at_b": at_b}
