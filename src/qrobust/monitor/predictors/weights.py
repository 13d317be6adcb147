"""Weight-only predictors: statistics of the linears' weights (heavy tails and outliers make a round-to-nearest
grid coarse for the bulk of the weights), and the RTN weight error itself. No data, no forward pass.

Statistics are taken per weight matrix (every linear but the LM head, as quantized), in float64, then
aggregated across layers: ``<stat>`` is the mean over layers, ``<stat>_max`` the worst layer; the outlier
fraction pools every weight (outliers counted per layer, divided by all weights).
"""
from __future__ import annotations

import torch

from .base import PredictorContext, register_predictor
from .shared import rtn_weights, variant_linears

OUTLIER_K = 4.0  # |w − mean| > 4·std of its layer: 6.3e-5 of a Gaussian's mass


def _centered(w: torch.Tensor) -> torch.Tensor:
    x = w.detach().double().flatten()
    return x - x.mean()


def excess_kurtosis(w: torch.Tensor) -> float:
    """m4 / m2² − 3 of all entries (scipy.stats.kurtosis with fisher=True, bias=True)."""
    d = _centered(w)
    m2 = d.pow(2).mean()
    return float(d.pow(4).mean() / m2.pow(2) - 3.0)


def max_over_rms(w: torch.Tensor) -> float:
    """max |w| / sqrt(mean w²): how far the largest weight stretches a grid set by the absolute maximum."""
    x = w.detach().double()
    return float(x.abs().max() / x.pow(2).mean().sqrt())


def outlier_count(w: torch.Tensor, k: float = OUTLIER_K) -> int:
    """How many entries lie more than ``k`` standard deviations (of the layer, population) from its mean."""
    d = _centered(w)
    return int((d.abs() > k * d.pow(2).mean().sqrt()).sum())


def _per_layer(ctx: PredictorContext, stat) -> list[float]:
    return [stat(lin.weight) for lin in variant_linears(ctx).values()]


@register_predictor("kurtosis", "weights", per_variant=False)
def kurtosis(ctx: PredictorContext) -> float:
    """Mean over layers of each weight matrix's excess kurtosis."""
    v = _per_layer(ctx, excess_kurtosis)
    return sum(v) / len(v)


@register_predictor("kurtosis_max", "weights", per_variant=False)
def kurtosis_max(ctx: PredictorContext) -> float:
    """Largest excess kurtosis of any weight matrix."""
    return max(_per_layer(ctx, excess_kurtosis))


@register_predictor("max_rms", "weights", per_variant=False)
def max_rms(ctx: PredictorContext) -> float:
    """Mean over layers of max|w| / rms(w)."""
    v = _per_layer(ctx, max_over_rms)
    return sum(v) / len(v)


@register_predictor("max_rms_max", "weights", per_variant=False)
def max_rms_max(ctx: PredictorContext) -> float:
    """Largest max|w| / rms(w) of any weight matrix."""
    return max(_per_layer(ctx, max_over_rms))


@register_predictor("outlier_frac", "weights", per_variant=False)
def outlier_frac(ctx: PredictorContext) -> float:
    """Fraction of all weights more than 4 std (of their layer) from their layer's mean."""
    layers = variant_linears(ctx).values()
    return sum(outlier_count(lin.weight) for lin in layers) / sum(lin.weight.numel() for lin in layers)


@register_predictor("rtn_weight_err", "weights", per_variant=True)
def rtn_weight_err(ctx: PredictorContext) -> float:
    """Σ‖W_rtn − W‖² / Σ‖W‖² over the variant's linears, at its bits / group size."""
    q = rtn_weights(ctx)
    num = den = 0.0
    for name, lin in variant_linears(ctx).items():
        w = lin.weight.detach().double()
        num += float((q[name].double() - w).pow(2).sum())
        den += float(w.pow(2).sum())
    return num / den
