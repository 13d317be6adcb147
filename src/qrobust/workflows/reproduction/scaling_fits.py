"""The two camps' functional forms for ΔQ L, fitted to one variant's checkpoints, and scored.

- **tokens** (Kumar et al. 2024, "Scaling Laws for Precision"; Ouyang et al. 2024): PTQ error grows as a
  power of the tokens seen per parameter, whatever the schedule: ``ΔQ L = k · (D/N)^γ · (N/1e6)^η``. With
  one size the last factor is folded into ``k`` (η is fitted only across sizes; η = 0 is "D/N alone").
- **schedule** (the paper): the same baseline times a step that grows as the learning rate decays:
  ``ΔQ L = k · (D/N)^γ · (N/1e6)^η · (1 + δ · depth)``, ``depth = 1 − lr/peak`` inside a decay, 0 elsewhere.
  The only difference is the decay term (one parameter, δ).

Fitted by weighted least squares in linear space (``scipy.optimize.least_squares``): ΔQ L can be ≤ 0 at
4 bits, where a log-space fit is undefined. The weights are fixed per point (``1/scale²``, scale = the mean
|ΔQ L| of the point's model size) so every size counts alike and the information criteria stay Gaussian
with a common unknown variance: ``AIC = n ln(RSS/n) + 2p``, ``BIC = n ln(RSS/n) + p ln n``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

FORMS = ("tokens", "schedule")
N_REF = 1e6  # N is measured in millions of parameters inside the fit (conditioning)


@dataclass(frozen=True)
class Points:
    """One variant's checkpoints: tokens per parameter ``x``, parameters ``n``, decay depth ``depth``,
    ΔQ L ``y``, the fixed weight of each point, and its held-out group (one decayed run, or -1)."""
    x: np.ndarray
    n: np.ndarray
    depth: np.ndarray
    y: np.ndarray
    w: np.ndarray
    group: np.ndarray

    def take(self, keep: np.ndarray) -> "Points":
        return Points(self.x[keep], self.n[keep], self.depth[keep], self.y[keep], self.w[keep], self.group[keep])

    def with_y(self, y: np.ndarray) -> "Points":
        return Points(self.x, self.n, self.depth, y, self.w, self.group)


def n_params(form: str, sizes: bool) -> int:
    """Free parameters: log k and γ, η when sizes are pooled, δ for the schedule form."""
    return 2 + int(sizes) + int(form == "schedule")


def predict(theta: np.ndarray, form: str, sizes: bool, p: Points) -> np.ndarray:
    """The form with parameters ``theta = (log k, γ[, η][, δ])`` at the points ``p``."""
    log_base = theta[0] + theta[1] * np.log(p.x)
    if sizes:
        log_base = log_base + theta[2] * np.log(p.n / N_REF)
    base = np.exp(log_base)
    return base * (1.0 + theta[-1] * p.depth) if form == "schedule" else base


def fit(form: str, sizes: bool, p: Points, start: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares parameters of ``form`` on ``p`` (δ kept above −1: the step may not flip the sign)."""
    k = n_params(form, sizes)
    if start is None:
        start = np.zeros(k)
        start[0] = math.log(max(float(np.mean(np.abs(p.y))), 1e-9))
    start = np.array(start, dtype=np.float64)
    lo = np.full(k, -np.inf)
    if form == "schedule":
        lo[-1] = -0.99
        if not np.any(p.depth > 0):  # no decay to learn δ from: it stays 0 (never a held-out run's δ)
            start[-1] = 0.0
    sw = np.sqrt(p.w)
    res = least_squares(lambda t: sw * (predict(t, form, sizes, p) - p.y), np.clip(start, lo + 1e-9, None),
                        bounds=(lo, np.full(k, np.inf)), method="trf", x_scale="jac")
    return np.asarray(res.x)


def rss(theta: np.ndarray, form: str, sizes: bool, p: Points) -> float:
    return float(np.sum(p.w * (predict(theta, form, sizes, p) - p.y) ** 2))


def information(rss_value: float, n: int, k: int) -> dict[str, float]:
    """Gaussian AIC and BIC from the (weighted) residual sum of squares of ``n`` points and ``k`` parameters."""
    ll = n * math.log(max(rss_value, 1e-300) / n)
    return {"aic": ll + 2 * k, "bic": ll + k * math.log(n)}


def held_out(form: str, sizes: bool, p: Points, start: np.ndarray | None = None) -> float:
    """Leave-one-decayed-run-out error: each decayed run (group ≥ 0) is predicted by the form fitted to all
    other points; the weighted root mean square of those predictions' errors."""
    errs, wts = [], []
    for g in np.unique(p.group[p.group >= 0]):
        out = p.group == g
        theta = fit(form, sizes, p.take(~out), start)
        errs.append(predict(theta, form, sizes, p.take(out)) - p.y[out])
        wts.append(p.w[out])
    if not errs:
        return float("nan")
    e, w = np.concatenate(errs), np.concatenate(wts)
    return float(math.sqrt(np.sum(w * e ** 2) / np.sum(w)))


def score(form: str, sizes: bool, p: Points) -> dict[str, float]:
    """A form's fit on ``p``: parameters, weighted RMSE, AIC, BIC and held-out error."""
    theta = fit(form, sizes, p)
    r = rss(theta, form, sizes, p)
    k = n_params(form, sizes)
    names = ["log_k", "gamma"] + (["eta"] if sizes else []) + (["delta"] if form == "schedule" else [])
    return {**dict(zip(names, map(float, theta))), "n": int(p.y.size), "params": k,
            "rmse": math.sqrt(r / float(np.sum(p.w))), **information(r, int(p.y.size), k),
            "held_out": held_out(form, sizes, p, theta)}


def held_out_gap(p: Points, sizes: bool, starts: dict[str, np.ndarray] | None = None) -> float:
    """Held-out error of the tokens form minus the schedule form's: > 0 when the decay term predicts unseen
    decayed runs better."""
    starts = starts or {}
    return held_out("tokens", sizes, p, starts.get("tokens")) - held_out("schedule", sizes, p, starts.get("schedule"))
