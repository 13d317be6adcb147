"""Weight statistics per quantized linear and overall: what makes a weight matrix hard to quantize.

Per matrix: Frobenius norm, RMS, max |w|, max/RMS (the range a uniform grid must cover, relative to
the typical weight), Pearson kurtosis E[(w−μ)⁴]/σ⁴ (3 for a Gaussian; heavy tails = outliers), and the
fraction of weights beyond k·σ from the mean (0.27 % for a Gaussian at k = 3). Overall numbers pool
all selected weights (float64 passes over the tensors), so they are exact, not averages of per-layer
numbers.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..quant.pipelines.in_memory import select_linears


def _stats(xs: list[torch.Tensor], k: float) -> dict[str, float]:
    """Exact pooled statistics of the given weights (three float64 passes: mean, central moments, tail)."""
    n = sum(x.numel() for x in xs)
    mu = sum(float(x.double().sum()) for x in xs) / n
    c2 = c4 = s2 = 0.0
    amax = 0.0
    for x in xs:
        d = x.double() - mu
        c2 += float((d * d).sum())
        c4 += float((d ** 4).sum())
        s2 += float((x.double() ** 2).sum())
        amax = max(amax, float(x.abs().max()))
    var = c2 / n
    sd = math.sqrt(var)
    rms = math.sqrt(s2 / n)
    beyond = sum(int(((x.double() - mu).abs() > k * sd).sum()) for x in xs)
    return {"numel": n, "mean": mu, "std": sd, "rms": rms, "fro_norm": math.sqrt(s2), "max_abs": amax,
            "max_over_rms": amax / rms if rms > 0 else math.inf,
            "kurtosis": (c4 / n) / (var * var) if var > 0 else math.nan, f"frac_beyond_{k:g}sigma": beyond / n}


def weight_stats(model: nn.Module, k: float = 3.0, include: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """{"layers": {name: stats}, "overall": stats, "k": k} for the linears a quantizer would touch."""
    with torch.no_grad():
        ws = {name: mod.weight.detach() for name, mod in select_linears(model, include, exclude).items()}
        layers = {name: _stats([w], k) for name, w in ws.items()}
        return {"layers": layers, "overall": _stats(list(ws.values()), k), "k": k}
