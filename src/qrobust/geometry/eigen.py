"""Extreme Hessian eigenvalues from matrix-vector products only: Lanczos and power iteration.

Lanczos keeps every basis vector and re-orthogonalises each new one against all of them twice
(classical Gram-Schmidt, repeated), which removes the ghost copies of converged eigenvalues that plain
Lanczos produces in floating point. The tridiagonal matrix is solved in float64. Every returned
eigenpair comes with its true residual ‖H u − θ u‖ (one extra product each), not only the Lanczos
estimate, so a caller can see how converged the numbers are. Memory: ``iters`` vectors of the
parameter count (fp32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ConfigError

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EigenResult:
    values: list[float]  # largest first (which="LA") or by magnitude (which="LM")
    residuals: list[float]  # ‖H u − θ u‖ per value
    iterations: int
    matvecs: int
    method: str
    converged: bool
    vectors: list[torch.Tensor] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"values": self.values, "residuals": self.residuals, "iterations": self.iterations,
                "matvecs": self.matvecs, "method": self.method, "converged": self.converged}


def _start(dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=torch.float32).to(device)
    return v / v.norm()


def lanczos(matvec: MatVec, dim: int, k: int = 1, iters: int = 30, tol: float = 1e-3, seed: int = 0,
            which: str = "LA", device: torch.device | str = "cpu") -> EigenResult:
    """Top-``k`` eigenvalues of a symmetric operator: largest algebraic (``LA``) or magnitude (``LM``).

    Stops when the Lanczos residual estimate of each wanted Ritz value is below ``tol``·|θ| or after
    ``iters`` steps (at most ``dim``)."""
    if k < 1 or iters < k:
        raise ConfigError(f"Lanczos needs 1 <= k <= iters, got k={k}, iters={iters}")
    if which not in ("LA", "LM"):
        raise ConfigError(f"which must be 'LA' (largest) or 'LM' (largest magnitude), got {which!r}")
    iters = min(iters, dim)
    q = _start(dim, seed, device)
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    matvecs = 0
    converged = False
    for j in range(iters):
        w = matvec(basis[j])
        matvecs += 1
        a = float(torch.dot(w, basis[j]))
        alphas.append(a)
        Q = torch.stack(basis)
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            w = w - Q.T @ (Q @ w)
        b = float(w.norm())
        theta, y = _ritz(alphas, betas)
        order = _order(theta, which)[:k]
        est = [abs(b * float(y[-1, i])) for i in order]
        if len(order) == k and all(e <= tol * max(abs(float(theta[i])), 1e-12) for e, i in zip(est, order)):
            converged = True
            break
        if b < 1e-10 * max(1.0, abs(a)):  # invariant subspace: the Ritz values are exact
            converged = True
            break
        if j + 1 < iters:
            betas.append(b)
            basis.append(w / b)
    theta, y = _ritz(alphas, betas)
    order = _order(theta, which)[:k]
    Q = torch.stack(basis[: len(alphas)])
    values, residuals, vectors = [], [], []
    for i in order:
        u = Q.T @ y[:, i].to(Q.dtype).to(Q.device)
        u = u / u.norm()
        hu = matvec(u)
        matvecs += 1
        lam = float(theta[i])
        values.append(lam)
        residuals.append(float((hu - lam * u).norm()))
        vectors.append(u)
    return EigenResult(values, residuals, len(alphas), matvecs, "lanczos", converged, vectors)


def _ritz(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(T)


def _order(theta: torch.Tensor, which: str) -> list[int]:
    key = theta if which == "LA" else theta.abs()
    return [int(i) for i in torch.argsort(key, descending=True)]


def power_iteration(matvec: MatVec, dim: int, iters: int = 100, tol: float = 1e-4, seed: int = 0,
                    device: torch.device | str = "cpu") -> EigenResult:
    """The eigenvalue of largest magnitude (which is λmax when the top of the spectrum dominates).

    Stops when the Rayleigh quotient changes by less than ``tol`` relative."""
    v = _start(dim, seed, device)
    hv = matvec(v)
    lam = float(torch.dot(v, hv))
    matvecs, it, converged = 1, 0, False
    for it in range(1, iters + 1):
        n = float(hv.norm())
        if n == 0:
            converged = True
            break
        v = hv / n
        hv = matvec(v)
        matvecs += 1
        new = float(torch.dot(v, hv))
        done = abs(new - lam) <= tol * max(abs(new), 1e-12)
        lam = new
        if done:
            converged = True
            break
    return EigenResult([lam], [float((hv - lam * v).norm())], it, matvecs, "power", converged, [v])
