"""What several predictors share: the linears a variant quantizes, their RTN weights, temporary weight swaps
and eval mode that always restore the model, and FP losses computed once per call (through ``ctx.cache``).

Cache keys name what is cached and the data it came from (``id`` of the token tensor), so a cache carried
across calls of :func:`~qrobust.monitor.predictors.base.compute_predictors` on the same FP weights stays
valid, and one carried to changed weights must not be (the caller's rule, as in ``base``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...evaluate import evaluate_loss
from ...quant.calibration import tokens_of
from ...quant.formats.grid import GroupSizeError, fake_quantize
from ...quant.pipelines.in_memory import select_linears
from ...quant.registry import QuantSpec
from .base import PredictorContext

BATCH = 8  # windows per forward pass (evaluation and calibration): what the sweep's evaluation uses


def need_spec(ctx: PredictorContext) -> QuantSpec:
    if ctx.spec is None:
        raise ConfigError("a per-variant predictor was called without a quantization spec")
    return ctx.spec


def need(tokens: Any, what: str) -> torch.Tensor:
    t = tokens_of(tokens)
    if t is None:
        raise ConfigError(f"this predictor reads {what}, but none are given")
    return t


def variant_linears(ctx: PredictorContext) -> dict[str, nn.Linear]:
    """The linears the variant quantizes (its include / exclude), or every one but the LM head."""
    spec = ctx.spec
    return select_linears(ctx.model, spec.include, spec.exclude) if spec is not None else select_linears(ctx.model)


def quant_key(spec: QuantSpec) -> tuple:
    """What RTN weights depend on: bits, group size, grid symmetry and the selection (not the method)."""
    return (spec.bits, spec.group_size, spec.sym, spec.include, spec.exclude)


def rtn_weights(ctx: PredictorContext) -> dict[str, torch.Tensor]:
    """RTN fake-quantized weights (fp32) of the variant's linears at its bits / group / symmetry, once per
    call: ``rtn-w3g128`` and ``gptq-w3g128`` share them."""
    spec = need_spec(ctx)

    def compute() -> dict[str, torch.Tensor]:
        out = {}
        for name, lin in variant_linears(ctx).items():
            try:
                out[name] = fake_quantize(lin.weight.detach().float(), spec.bits, spec.group_size, spec.sym)
            except GroupSizeError as e:
                raise GroupSizeError(f"predictor: layer '{name}': {e}") from None
        return out
    return ctx.cached(("rtn_weights", quant_key(spec)), compute)


@contextmanager
def swapped(layers: dict[str, nn.Linear], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The linears hold ``weights`` for the duration of the block; the originals come back bit for bit."""
    saved = {n: layers[n].weight.detach().clone() for n in weights}
    try:
        with torch.no_grad():
            for n, w in weights.items():
                layers[n].weight.copy_(w.to(layers[n].weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                layers[n].weight.copy_(w)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off for the duration (a predictor must not draw from the RNG); the modes come back as found."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


def fp_loss(ctx: PredictorContext, tokens: torch.Tensor, kind: str) -> float:
    """The FP model's mean loss on ``tokens`` once per call (``kind``: "fp_loss" for the evaluation blocks,
    the key the monitor may pre-fill; "fp_loss_calib" for the calibration windows). A pre-filled value may
    be a float or a ``LossResult``."""
    def compute() -> float:
        with eval_mode(ctx.model):  # evaluate_loss would put a partly-training model wholly in train mode
            return evaluate_loss(ctx.model, tokens, batch_size=BATCH).loss
    v = ctx.cached((kind, id(tokens)), compute)
    return float(getattr(v, "loss", v))


def dq_with(ctx: PredictorContext, weights: dict[str, torch.Tensor], tokens: torch.Tensor, kind: str) -> float:
    """ΔQ L = L(model with ``weights`` swapped in) / L(FP) − 1 on ``tokens``."""
    base = fp_loss(ctx, tokens, kind)
    with swapped(variant_linears(ctx), weights), eval_mode(ctx.model):
        loss = evaluate_loss(ctx.model, tokens, batch_size=BATCH).loss
    return loss / base - 1.0


def window_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``ids`` ([b, T]) as a differentiable scalar."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
