"""A second-order estimate of the loss increase along the RTN error, from the diagonal empirical Fisher.

L(W + Δ) − L(W) ≈ ½ Σ_i F_ii Δ_i² near a minimum (the gradient term averages out and the Fisher stands
in for the Hessian). F is estimated from one gradient per calibration window (the window's mean NLL):
F ≈ (T − 1) · mean_w g_w², the per-token Fisher if the tokens' gradients were independent. Unlike the
layer objective tr(ΔW H ΔWᵀ), this weighs every weight by how much the *loss* (not the layer output)
reacts to it, across layers. Divided by the FP calibration loss, it estimates ΔQ L itself.

Gradients come from ``torch.autograd.grad`` on the linears' weights only: ``.grad`` is never written,
``requires_grad`` is switched on for the duration and restored, dropout is off (eval mode).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ...quant.pipelines.in_memory import select_linears
from .base import PredictorContext, register_predictor
from .shared import device_of, eval_mode, fp_loss, need, rtn_weights, variant_linears, window_loss


@contextmanager
def grads_on(params: list[nn.Parameter]) -> Iterator[None]:
    """Autograd on (even inside no_grad / inference_mode) with ``params`` requiring grad; flags restored."""
    flags = [p.requires_grad for p in params]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def fisher_diagonal(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """(T − 1) · mean over windows of the squared gradient of each window's mean NLL, per linear weight
    (every linear but the LM head), fp32."""
    layers = select_linears(model)
    names, params = list(layers), [lin.weight for lin in layers.values()]
    with eval_mode(model), grads_on(params):
        acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in zip(names, params)}  # normal tensors
        for ids in tokens:
            # a clone made here is a normal tensor even when the caller's tokens are inference tensors
            loss = window_loss(model, ids[None].to(device_of(model)).clone())
            for n, g in zip(names, torch.autograd.grad(loss, params)):
                acc[n].add_(g.float().pow(2))
    scale = (tokens.shape[1] - 1) / tokens.shape[0]
    return {n: a.mul_(scale) for n, a in acc.items()}


@register_predictor("fisher_rtn", "calibration", per_variant=True)
def fisher_rtn(ctx: PredictorContext) -> float:
    """½ Σ F_ii Δw_i² / L_FP(calibration), F the diagonal empirical Fisher, Δw = RTN − W."""
    tokens = need(ctx.calibration, "calibration batches")
    F = ctx.cached(("fisher", id(tokens)), lambda: fisher_diagonal(ctx.model, tokens))
    q = rtn_weights(ctx)
    total = 0.0
    for name, lin in variant_linears(ctx).items():
        d = q[name].float() - lin.weight.detach().float()
        total += float((F[name] * d.pow(2)).sum(dtype=torch.float64))
    return 0.5 * total / fp_loss(ctx, tokens, "fp_loss_calib")
