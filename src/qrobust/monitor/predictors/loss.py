"""Loss-based predictors: ΔQ L itself for cheaper quantized weights, measured with the weights swapped in
and restored (the FP loss once per token set, through the cache).

- ``rtn_dq``: RTN ΔQ L on the evaluation blocks (the monitor's own measurement; what GPTQ is compared to).
- ``rtn_dq_calib``: the same on the calibration windows only: the cheapest loss-based signal.
- ``gptq1_dq_calib`` / ``gptq1_dq``: ΔQ L of the one-shot GPTQ weights of ``hessian_err_gptq`` (FP
  Hessians, no block-sequential pass) on the calibration windows / evaluation blocks: GPTQ's solution
  without its sequential re-calibration. On the calibration windows it is optimistic (the weights were
  fitted to them); the evaluation blocks are held out.
"""
from __future__ import annotations

from .base import PredictorContext, register_predictor
from .hessian import gptq_weights
from .shared import dq_with, need, rtn_weights


@register_predictor("rtn_dq", "eval", per_variant=True)
def rtn_dq(ctx: PredictorContext) -> float:
    """RTN ΔQ L = L(RTN) / L(FP) − 1 on the evaluation blocks, at the variant's bits / group size."""
    return dq_with(ctx, rtn_weights(ctx), need(ctx.eval_blocks, "evaluation blocks"), "fp_loss")


@register_predictor("rtn_dq_calib", "calibration", per_variant=True)
def rtn_dq_calib(ctx: PredictorContext) -> float:
    """RTN ΔQ L on the calibration windows."""
    return dq_with(ctx, rtn_weights(ctx), need(ctx.calibration, "calibration batches"), "fp_loss_calib")


@register_predictor("gptq1_dq_calib", "calibration", per_variant=True)
def gptq1_dq_calib(ctx: PredictorContext) -> float:
    """ΔQ L of one-shot GPTQ weights (FP Hessians) on the calibration windows they were fitted to."""
    return dq_with(ctx, gptq_weights(ctx), need(ctx.calibration, "calibration batches"), "fp_loss_calib")


@register_predictor("gptq1_dq", "eval", per_variant=True)
def gptq1_dq(ctx: PredictorContext) -> float:
    """ΔQ L of one-shot GPTQ weights (FP Hessians from the calibration windows) on the evaluation blocks."""
    return dq_with(ctx, gptq_weights(ctx), need(ctx.eval_blocks, "evaluation blocks"), "fp_loss")
