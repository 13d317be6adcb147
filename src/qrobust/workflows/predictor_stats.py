"""Rank agreement of a predictor with measured GPTQ ΔQ L: Spearman ρ and Kendall τ-b (scipy.stats) with a
seeded percentile bootstrap over checkpoints.

Checkpoints are the unit of resampling: a bootstrap sample draws n checkpoint indices with replacement and
recomputes both coefficients on those (x, y) pairs. The resamples are vectorized (ranks per row, τ-b from
sign products) because a validation needs thousands of them per predictor and run; each equals scipy's
``spearmanr`` / ``kendalltau`` on the same resample (tests check this against a loop over scipy). A resample
where x or y is constant has no coefficient and is left out of the percentiles.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

N_BOOT = 2000
CONFIDENCE = 0.95
MIN_BOOT_N = 4  # fewer checkpoints than this: a point estimate, no interval
CHUNK = 4_000_000  # float64 cells per block of resamples in the τ computation (~32 MB)


@dataclass(frozen=True)
class Agreement:
    """ρ and τ of one predictor against the truth over ``n`` checkpoints; intervals None when n < 4 or
    the coefficient is undefined (a constant predictor or truth)."""

    n: int
    rho: float | None
    tau: float | None
    rho_ci: tuple[float, float] | None = None
    tau_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("rho_ci", "tau_ci"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair of ``x``, ``y`` [b, n]: Pearson correlation of average ranks (NaN when
    a row is constant)."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each row pair of ``x``, ``y`` [b, n]: Σ sx·sy / √(Σ sx² · Σ sy²) over pairs i < j,
    with s the sign of the pair's difference (ties count 0, as in τ-b); NaN when a row is constant."""
    b, n = x.shape
    iu = np.triu_indices(n, k=1)
    out = np.empty(b)
    step = max(1, CHUNK // max(1, len(iu[0])))
    for s in range(0, b, step):
        xs, ys = x[s:s + step], y[s:s + step]
        sx = np.sign(xs[:, iu[0]] - xs[:, iu[1]])
        sy = np.sign(ys[:, iu[0]] - ys[:, iu[1]])
        den = np.sqrt((sx * sx).sum(axis=1) * (sy * sy).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + step] = np.where(den > 0, (sx * sy).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return out


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float] | None:
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return None
    a = (1.0 - confidence) / 2
    lo, hi = np.quantile(ok, [a, 1.0 - a])
    return float(lo), float(hi)


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] checkpoint indices drawn with replacement from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def agreement(x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT, seed: int = 0,
              confidence: float = CONFIDENCE) -> Agreement:
    """Spearman ρ and Kendall τ-b of ``x`` against ``y`` (scipy), with bootstrap percentile intervals when
    there are at least :data:`MIN_BOOT_N` pairs."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {xa.shape} and {ya.shape}")
    n = int(xa.size)
    if n < 2 or np.ptp(xa) == 0 or np.ptp(ya) == 0:  # no ranking to agree with: undefined, not a warning
        return Agreement(n, None, None)
    rho = finite(spearmanr(xa, ya).statistic)
    tau = finite(kendalltau(xa, ya).statistic)
    if n < MIN_BOOT_N or n_boot <= 0:
        return Agreement(n, rho, tau)
    idx = resample_indices(n, n_boot, seed)
    xb, yb = xa[idx], ya[idx]
    rho_ci = percentile_interval(spearman_rows(xb, yb), confidence) if rho is not None else None
    tau_ci = percentile_interval(kendall_rows(xb, yb), confidence) if tau is not None else None
    return Agreement(n, rho, tau, rho_ci, tau_ci)


def cost_ratio(truth_seconds: Sequence[float], predictor_seconds: Sequence[float]) -> float | None:
    """Median over checkpoints of (GPTQ + eval seconds) / (predictor seconds): how many times cheaper the
    predictor is (pairs with a missing or non-positive time are left out)."""
    r = [t / p for t, p in zip(truth_seconds, predictor_seconds)
         if t is not None and p is not None and t > 0 and p > 0 and math.isfinite(t) and math.isfinite(p)]
    return float(np.median(r)) if r else None


def noise_ceiling(truth: Sequence[float], se: Sequence[float], n_sim: int = N_BOOT, seed: int = 0) -> float | None:
    """The Spearman ρ a perfect predictor can expect against measured values that carry evaluation noise: the
    median over ``n_sim`` seeded draws of ρ(truth, truth + N(0, se²)), with ``se`` each record's bootstrap
    standard error. A predictor near this value is as good as the measurement lets anyone tell; None when
    there is no ranking (fewer than 2 values, constant truth) or no standard error."""
    y, s = np.asarray(truth, dtype=float), np.asarray(se, dtype=float)
    if y.size < 2 or np.ptp(y) == 0 or y.shape != s.shape or not np.all(np.isfinite(s)):
        return None
    noisy = y + np.random.default_rng(seed).standard_normal((n_sim, y.size)) * s
    rho = spearman_rows(np.broadcast_to(y, noisy.shape).copy(), noisy)
    ok = rho[np.isfinite(rho)]
    return float(np.median(ok)) if ok.size else None
