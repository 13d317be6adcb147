"""Compare stored records with honest uncertainty: ΔQ L or loss of two records, and ΔQ L of two runs at an
equal FP loss, by the paired bootstrap over evaluation blocks of :mod:`qrobust.stats`.

Records are typed :class:`~qrobust.results.records.VariantRecord` s (a plain dict, as exported or hand-made,
is parsed once on the way in). Two records evaluated on the same eval set (same id, same number of blocks)
are resampled with the same block indices (paired); otherwise independently.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import QrobustError
from ..stats import CONFIDENCE, N_BOOT, crossing, difference, dq_interval, dq_samples, indices
from .records import VariantRecord, variant_records

Rec = VariantRecord | Mapping[str, Any]


def _one(rec: Rec) -> VariantRecord:
    return variant_records([rec])[0]


def block_losses(rec: VariantRecord) -> tuple[np.ndarray, np.ndarray]:
    """The record's per-block summed NLLs (FP, quantized) as float64 arrays; one error line when it has none."""
    fp = np.asarray(rec.blocks.nll_fp, dtype=np.float64)
    q = np.asarray(rec.blocks.nll_q, dtype=np.float64)
    if fp.size == 0 or fp.shape != q.shape:
        raise QrobustError("record has no per-block losses to resample (written by an old qrobust?); re-run the sweep")
    return fp, q


def record_interval(rec: Rec, **kw: Any) -> dict[str, float]:
    """The stored interval of a record when it has one, else computed from its per-block losses."""
    r = _one(rec)
    stored = r.metrics.dq_ci
    if stored is not None and not kw:
        return dict(r.to_dict()["metrics"]["dq_ci"])
    fp, q = block_losses(r)
    return dq_interval(fp, q, **kw)


def _draws(a: VariantRecord, b: VariantRecord, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Block indices for resampling ``a`` and ``b``: one draw for both when they share an eval set (paired),
    independent draws otherwise."""
    na, nb = block_losses(a)[0].size, block_losses(b)[0].size
    paired = a.eval_set.id is not None and a.eval_set.id == b.eval_set.id and na == nb
    ia = indices(na, n_boot, seed)
    return ia, ia if paired else indices(nb, n_boot, seed + 1), paired


def _with_samples(out: dict[str, Any], diff: np.ndarray, n_blocks: int, keep: bool) -> dict[str, Any]:
    """``keep``: also return the bootstrap replicates (``samples``) and the block count, which pooling over
    training seeds needs (:func:`qrobust.stats.pool_seeds`); plain numbers otherwise (JSON-ready)."""
    return {**out, "samples": diff, "n_blocks": n_blocks} if keep else out


def compare_dq(a: Rec, b: Rec, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0,
               samples: bool = False) -> dict[str, Any]:
    """Is ΔQ L of record ``a`` greater than of record ``b``?

    Returns the difference ΔQ L(a) − ΔQ L(b), its bootstrap interval, ``p_greater`` (the bootstrap
    probability that the difference is ≤ 0: small means a > b is well supported), ``greater`` (the
    interval lies above 0) and whether the resampling was paired (same eval blocks)."""
    ra, rb = _one(a), _one(b)
    fa, qa = block_losses(ra)
    fb, qb = block_losses(rb)
    ia, ib, paired = _draws(ra, rb, n_boot, seed)
    diff = dq_samples(fa, qa, ia) - dq_samples(fb, qb, ib)
    point = float((qa.sum() / fa.sum()) - (qb.sum() / fb.sum()))
    return _with_samples(difference(point, diff, confidence, paired, n_boot), diff, fa.size, samples)


def _loss_samples(rec: VariantRecord, which: str, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss (nats/token) of ``rec`` for the FP (``which="fp"``) or quantized model, and its bootstrap
    samples. Every block has the same number of target tokens, so the loss is the stored loss times the ratio
    of the resampled to the full mean block NLL."""
    fp, q = block_losses(rec)
    nll = fp if which == "fp" else q
    stored = rec.metrics.loss_fp if which == "fp" else rec.metrics.loss_q
    mean = nll.mean()
    scale = float(stored) / mean if stored is not None and mean > 0 else 1.0
    return float(mean * scale), nll[idx].mean(axis=1) * scale


def compare_loss(a: Rec, b: Rec, which: str = "q", n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                 seed: int = 0, samples: bool = False) -> dict[str, Any]:
    """Is the loss (quantized by default, ``which="fp"`` for full precision) of record ``a`` greater than
    of record ``b``? Same fields as :func:`compare_dq`; the difference is in nats per token."""
    ra, rb = _one(a), _one(b)
    ia, ib, paired = _draws(ra, rb, n_boot, seed)
    la, sa = _loss_samples(ra, which, ia)
    lb, sb = _loss_samples(rb, which, ib)
    return _with_samples(difference(la - lb, sa - sb, confidence, paired, n_boot), sa - sb, ia.shape[1], samples)


def _dq_at(recs: list[VariantRecord], level: float, idx: np.ndarray) -> tuple[float, np.ndarray, dict[str, Any]]:
    """ΔQ L interpolated linearly between the two checkpoints whose FP losses bracket ``level``, and its
    bootstrap samples (both checkpoints resampled with the same block indices; weights held fixed)."""
    losses = [float(r.metrics.loss_fp) for r in recs]  # type: ignore[arg-type]
    where = crossing(losses, level)
    if where is None:
        raise QrobustError(f"FP loss {level:.4f} is outside the run's range [{min(losses):.4f}, {max(losses):.4f}]")
    i, w = where
    (f0, q0), (f1, q1) = block_losses(recs[i]), block_losses(recs[i + 1])
    point = (1 - w) * (q0.sum() / f0.sum() - 1) + w * (q1.sum() / f1.sum() - 1)
    samples = (1 - w) * dq_samples(f0, q0, idx) + w * dq_samples(f1, q1, idx)
    at = {"steps": [recs[i].checkpoint.step, recs[i + 1].checkpoint.step], "weight": w}
    return float(point), samples, at


def compare_dq_at_fp_loss(a: Sequence[Rec], b: Sequence[Rec], level: float, n_boot: int = N_BOOT,
                          confidence: float = CONFIDENCE, seed: int = 0, samples: bool = False) -> dict[str, Any]:
    """Is ΔQ L of run ``a`` greater than of run ``b`` where both reach the FP loss ``level``?

    ``a`` and ``b`` are one variant's records of each run in step order. Each run's ΔQ L at ``level`` is
    interpolated between the two checkpoints whose FP losses bracket it; the bootstrap resamples blocks
    (the same indices for all four checkpoints when they share one eval set). Adds ``dq_a``, ``dq_b`` and
    where each was read (``at_a``, ``at_b``: the two steps and the interpolation weight)."""
    ra, rb = variant_records(a), variant_records(b)
    sizes = {block_losses(r)[0].size for r in ra + rb}
    ids = {r.eval_set.id for r in ra + rb}
    paired = len(sizes) == 1 and len(ids) == 1 and None not in ids
    ia = indices(block_losses(ra[0])[0].size, n_boot, seed)
    ib = ia if paired else indices(block_losses(rb[0])[0].size, n_boot, seed + 1)
    da, sa, at_a = _dq_at(ra, level, ia)
    db, sb, at_b = _dq_at(rb, level, ib)
    out = _with_samples(difference(da - db, sa - sb, confidence, paired, n_boot), sa - sb, ia.shape[1], samples)
    return {**out, "level": level, "dq_a": da, "dq_b": db, "at_a": at_a, "at_b": at_b}
