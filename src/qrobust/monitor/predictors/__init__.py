"""Cheap predictors of GPTQ ΔQ L, by registry: ``base`` is the contract; each other module registers some
(``weights``: weight statistics and RTN weight error; ``hessian``: the GPTQ layer objective for RTN and
one-shot GPTQ weights; ``loss``: ΔQ L of RTN / one-shot GPTQ on evaluation or calibration tokens;
``fisher``: a diagonal-Fisher estimate of the RTN loss increase)."""
from .base import PREDICTORS, Predictor, PredictorContext, PredictorValues, compute_predictors, register_predictor
from . import fisher, hessian, loss, weights  # noqa: F401  (register the predictors)

__all__ = ["PREDICTORS", "Predictor", "PredictorContext", "PredictorValues", "compute_predictors",
           "register_predictor"]
