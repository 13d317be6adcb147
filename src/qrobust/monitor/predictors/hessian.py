"""Hessian-weighted weight error: GPTQ's own layer objective tr(ΔW H ΔWᵀ), H = XᵀX / N from the FP model's
inputs to each linear on the calibration windows, for the RTN weights and for one-shot GPTQ weights.

One forward pass per calibration batch gives every H at once (forward pre-hooks). Linears that receive the
same input tensor (q/k/v, gate/up: consecutive calls on one tensor object) share one XᵀX, and the Hessians
are cached per calibration set, so every variant (bits 3 and 4, RTN and GPTQ) reuses them.

The GPTQ weights here are *one-shot*: each linear is solved against its FP Hessian (no block-sequential
re-calibration on quantized outputs) with the GPTQ core of ``quant/methods``, so they cost no evaluation
and no extra forward pass; ``hessian_err_gptq`` is the objective GPTQ minimizes, at GPTQ's solution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import QrobustError
from ...quant.methods.gptq import gptq_options, ieee_fp32
from ...quant.methods.gptq_core import gptq_quantize
from ...quant.methods.hessian import XtX
from ...quant.pipelines.in_memory import select_linears
from ...quant.pipelines.staged import StopForward
from .base import PredictorContext, register_predictor
from .shared import BATCH, device_of, eval_mode, need, need_spec, quant_key, rtn_weights, variant_linears


@dataclass
class LayerHessians:
    """H = XᵀX / N per input (keyed by the first linear that reads it) and each linear's input leader."""
    H: dict[str, torch.Tensor]
    leader: dict[str, str]
    n_tokens: int

    def of(self, name: str) -> torch.Tensor:
        if name not in self.leader:
            raise QrobustError(f"predictor: layer '{name}' received no calibration input; exclude it")
        return self.H[self.leader[name]]


def collect_hessians(model: nn.Module, tokens: torch.Tensor, batch_size: int = BATCH) -> LayerHessians:
    """Forward the FP model over ``tokens`` (eval mode, no grad) with pre-hooks on every linear but the LM
    head. Grouping is found on the first batch: a linear whose input *is* the previous hooked linear's
    input (same object) joins its group; later batches only feed the leaders. The forward stops at the LM
    head (its logits are not needed)."""
    layers = select_linears(model)
    acc: dict[str, XtX] = {}
    leader: dict[str, str] = {}
    last: dict[str, object] = {"x": None, "lead": None}

    def hook(name: str):
        def pre(mod: nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in leader:
                leader[name] = last["lead"] if x is last["x"] and last["lead"] is not None else name
            if leader[name] == name:
                if name not in acc:
                    acc[name] = XtX(x.shape[-1], x.device)
                acc[name].add(x)
            last["x"], last["lead"] = x, leader[name]
        return pre
    handles = [lin.register_forward_pre_hook(hook(n)) for n, lin in layers.items()]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:  # its logits are not needed: stop there
        handles.append(head.register_forward_pre_hook(lambda m, a: stop()))
    try:
        with torch.no_grad(), eval_mode(model), ieee_fp32():
            for b in torch.split(tokens, batch_size):
                try:
                    model(input_ids=b.to(device_of(model)), use_cache=False)
                except StopForward:
                    pass
                last["x"] = last["lead"] = None
    finally:
        for h in handles:
            h.remove()
    n = next(iter(acc.values())).n if acc else 0
    return LayerHessians({k: a.full() / a.n for k, a in acc.items()}, leader, n)


def stop() -> None:
    raise StopForward


def hessians(ctx: PredictorContext) -> LayerHessians:
    """The FP Hessians of the calibration windows, once per calibration set and cache."""
    tokens = need(ctx.calibration, "calibration batches")
    return ctx.cached(("xtx", id(tokens)), lambda: collect_hessians(ctx.model, tokens))


def quad(d: torch.Tensor, H: torch.Tensor) -> float:
    """tr(d H dᵀ) = Σ_rows d H dᵀ, fp32 products summed in float64."""
    d = d.to(H.device, torch.float32)
    return float(((d @ H) * d).sum(dtype=torch.float64))


def objective(ctx: PredictorContext, weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(Σ tr(ΔW H ΔWᵀ), Σ tr(W H Wᵀ)) over the variant's linears, ΔW = weights − W."""
    hs = hessians(ctx)
    err = ref = 0.0
    for name, lin in variant_linears(ctx).items():
        H = hs.of(name)
        w = lin.weight.detach().float()
        err += quad(weights[name].float().to(w.device) - w, H)
        ref += quad(w, H)
    return err, ref


def gptq_weights(ctx: PredictorContext) -> dict[str, torch.Tensor]:
    """One-shot GPTQ weights (fp32) of the variant's linears from the FP Hessians, once per variant. The
    options are the spec's when it is a GPTQ spec (profile, damping, act-order, grid), GPTQ's defaults
    otherwise; linears sharing an input are solved stacked, as GPTQ does (rows are independent)."""
    spec = need_spec(ctx)
    opts = gptq_options(dict(spec.options) if spec.method == "gptq" else {})

    def compute() -> dict[str, torch.Tensor]:
        hs, layers = hessians(ctx), variant_linears(ctx)
        groups: dict[str, list[str]] = {}
        for name in layers:
            hs.of(name)
            groups.setdefault(hs.leader[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        with ieee_fp32():
            for lead, names in groups.items():
                W = torch.cat([layers[n].weight.detach().float() for n in names])
                res = gptq_quantize(W, hs.H[lead], spec.bits, spec.group_size, spec.sym, damp=opts.damp,
                                    block_size=opts.block_size, act_order=opts.act_order,
                                    static_groups=opts.static_groups, damp_step=opts.damp_step,
                                    damp_max=opts.damp_max, name=", ".join(names), grid=opts.quant_grid)
                rows = 0
                for n in names:
                    k = layers[n].weight.shape[0]
                    out[n] = res.weight[rows: rows + k]
                    rows += k
        return out
    return ctx.cached(("gptq_weights", quant_key(spec), opts), compute)


@register_predictor("hessian_err_rtn", "calibration", per_variant=True)
def hessian_err_rtn(ctx: PredictorContext) -> float:
    """Σ over linears of tr(ΔW H ΔWᵀ), ΔW = RTN − W, H = XᵀX / N of the FP calibration inputs."""
    return objective(ctx, rtn_weights(ctx))[0]


@register_predictor("hessian_rel_rtn", "calibration", per_variant=True)
def hessian_rel_rtn(ctx: PredictorContext) -> float:
    """Σ tr(ΔW H ΔWᵀ) / Σ tr(W H Wᵀ) for the RTN weights: the relative output error of the linears."""
    err, ref = objective(ctx, rtn_weights(ctx))
    return err / ref


@register_predictor("hessian_err_gptq", "calibration", per_variant=True)
def hessian_err_gptq(ctx: PredictorContext) -> float:
    """Σ tr(ΔW H ΔWᵀ) for one-shot GPTQ weights solved layer by layer against the FP Hessians."""
    return objective(ctx, gptq_weights(ctx))[0]


@register_predictor("hessian_rel_gptq", "calibration", per_variant=True)
def hessian_rel_gptq(ctx: PredictorContext) -> float:
    """Σ tr(ΔW H ΔWᵀ) / Σ tr(W H Wᵀ) for the one-shot GPTQ weights."""
    err, ref = objective(ctx, gptq_weights(ctx))
    return err / ref
