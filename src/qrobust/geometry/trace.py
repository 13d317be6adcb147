"""Hessian trace from matrix-vector products: Hutchinson and Hutch++, with confidence intervals.

Hutchinson: tr(H) ≈ mean of zᵀHz over Rademacher probes z (unbiased; variance 2·Σ_{i≠j} H_ij²).
Hutch++ (Meyer, Musco, Musco & Woodruff 2021) spends a third of the products on a sketch Q of H's
top range, takes tr(QᵀHQ) exactly and runs Hutchinson only on the deflated rest (I − QQᵀ)H(I − QQᵀ),
whose variance is much smaller when a few eigenvalues dominate, as they do for trained networks.
The interval is Student-t over the Hutchinson samples (the exact part has no sampling error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from scipy.stats import t as student_t

from ..errors import ConfigError

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TraceResult:
    trace: float
    ci_low: float
    ci_high: float
    stderr: float
    probes: int
    matvecs: int
    method: str
    confidence: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def rademacher(dim: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (dim,), generator=g, dtype=torch.int8).float().mul_(2).sub_(1)


def _interval(exact: float, samples: list[float], confidence: float) -> tuple[float, float, float, float]:
    n = len(samples)
    mean = sum(samples) / n
    if n < 2:
        return exact + mean, -math.inf, math.inf, math.inf
    sd = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1))
    se = sd / math.sqrt(n)
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * se
    est = exact + mean
    return est, est - half, est + half, se


def hutchinson(matvec: MatVec, dim: int, probes: int = 32, seed: int = 0, confidence: float = 0.95,
               device: torch.device | str = "cpu") -> TraceResult:
    if probes < 1:
        raise ConfigError(f"Hutchinson needs at least 1 probe, got {probes}")
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        z = rademacher(dim, g).to(device)
        samples.append(float(torch.dot(z, matvec(z))))
    est, lo, hi, se = _interval(0.0, samples, confidence)
    return TraceResult(est, lo, hi, se, probes, probes, "hutchinson", confidence)


def hutchpp(matvec: MatVec, dim: int, matvecs: int = 48, seed: int = 0, confidence: float = 0.95,
            device: torch.device | str = "cpu") -> TraceResult:
    """Hutch++ with a budget of ``matvecs`` products (split in thirds: sketch, exact part, residual probes)."""
    m = matvecs // 3
    if m < 1:
        raise ConfigError(f"Hutch++ needs a budget of at least 3 products, got {matvecs}")
    g = torch.Generator().manual_seed(seed)
    S = [rademacher(dim, g).to(device) for _ in range(m)]
    Q, _ = torch.linalg.qr(torch.stack([matvec(s) for s in S], dim=1))  # [dim, m], orthonormal columns
    exact = sum(float(torch.dot(Q[:, i], matvec(Q[:, i]))) for i in range(Q.shape[1]))
    samples = []
    for _ in range(m):
        z = rademacher(dim, g).to(device)
        z = z - Q @ (Q.T @ z)
        samples.append(float(torch.dot(z, matvec(z))))
    est, lo, hi, se = _interval(exact, samples, confidence)
    return TraceResult(est, lo, hi, se, m, 3 * m, "hutch++", confidence)
