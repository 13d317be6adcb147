"""Cheap predictors of GPTQ ΔQ L, by registry: ``base`` is the contract; each other module registers some."""
from .base import PREDICTORS, Predictor, PredictorContext, PredictorValues, compute_predictors, register_predictor

__all__ = ["PREDICTORS", "Predictor", "PredictorContext", "PredictorValues", "compute_predictors",
           "register_predictor"]
