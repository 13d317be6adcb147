"""Activation and KV-cache fake quantization of a variant (``QuantSpec.act`` / ``QuantSpec.kv``) through
hooks: a forward pre-hook on every selected linear quantizes its input; the KV-cache stand-in
(``kv_cache.py``) quantizes the keys and values each attention module stores. The math is the formats
package's (``formats/activations.py``); nothing here depends on the format.

Static scales (``-tensor``, ``-head``) are calibrated once per variant, after its weights are quantized:
the calibration tokens run through the model with quantized weights and FP activations (no activation
or KV quantization live), and each hooked tensor's (min, max) over every calibration token is kept. The
layer-streamed path does the same block by block (``ActStream``), on the same batches, so its numbers
equal the in-memory ones. Dynamic per-token scales need no calibration.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import ConfigError, QrobustError
from ..formats.activations import act_format, fake_quantize_act, is_static, merge, observe, static_params
from ..formats.number_format import NumberFormat
from ..registry import QuantSpec, get_quantizer
from ..timing import calibrating
from .kv_cache import attention_modules, check_kv_model, hook_cache


@dataclass
class ActPlan:
    """What a variant fake-quantizes besides its weights, and the ranges its static scales come from
    (by linear name, and by attention name + ``.k`` / ``.v``)."""

    act: NumberFormat | None
    kv: NumberFormat | None
    ranges: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def static(self) -> bool:
        return any(f is not None and is_static(f) for f in (self.act, self.kv))


def act_plan(spec: QuantSpec) -> ActPlan | None:
    """The plan of ``spec``, None for a weight-only variant."""
    if not spec.act and not spec.kv:
        return None
    return ActPlan(act_format(spec.act) if spec.act else None, act_format(spec.kv, "kv") if spec.kv else None)


def smooth_alpha(spec: QuantSpec) -> float:
    """SmoothQuant's migration strength α of ``spec`` (the method option ``smoothquant``), 0 when off."""
    return float(getattr(get_quantizer(spec.method).parse_options(dict(spec.options)), "smoothquant", 0.0))


def needs_calibration(spec: QuantSpec) -> bool:
    """Whether ``spec`` needs calibration tokens: its method calibrates, a static activation or KV
    format is calibrated, or SmoothQuant measures activations."""
    plan = act_plan(spec)
    return (get_quantizer(spec.method).needs_calibration or (plan is not None and plan.static)
            or smooth_alpha(spec) > 0)


def act_calibration_batch(spec: QuantSpec) -> int:
    """Calibration sequences per forward for static ranges: the method's calibration batch size."""
    return get_quantizer(spec.method).calibration_batch_size(dict(spec.options))


def check_act(spec: QuantSpec, calibration: Any) -> ActPlan | None:
    """``spec``'s plan, refused (one line) before any work when its method cannot fake-quantize
    activations or a static scale has no calibration data."""
    plan = act_plan(spec)
    if plan is None:
        return None
    if not get_quantizer(spec.method).activation_quant:
        raise ConfigError(f"{spec.label}: method '{spec.method}' does not support activation / KV-cache "
                          "quantization; use rtn or gptq, or drop act / kv")
    if plan.static and calibration is None:
        raise QrobustError(f"{spec.label}: static (calibrated) activation / KV scales need calibration data; pass "
                           "calibration tokens or use a dynamic per-token format (e.g. int8-token)")
    return plan


def _linear_observer(plan: ActPlan, name: str):
    def pre(mod: nn.Module, args: tuple) -> None:
        plan.ranges[name] = merge(plan.ranges.get(name), observe(args[0], plan.act))
    return pre


def _kv_observer(plan: ActPlan, name: str):
    def fn(x: torch.Tensor, which: str) -> torch.Tensor:
        key = f"{name}.{which}"
        plan.ranges[key] = merge(plan.ranges.get(key), observe(x, plan.kv))
        return x
    return fn


@contextmanager
def observing(plan: ActPlan, linears: dict[str, nn.Linear], attns: dict[str, tuple[nn.Module, str]]
              ) -> Iterator[None]:
    """Record the (min, max) of every hooked tensor whose format is static, for the duration."""
    handles = []
    try:
        if plan.act is not None and is_static(plan.act):
            handles += [lin.register_forward_pre_hook(_linear_observer(plan, n)) for n, lin in linears.items()]
        if plan.kv is not None and is_static(plan.kv):
            handles += [hook_cache(mod, arg, _kv_observer(plan, n)) for n, (mod, arg) in attns.items()]
        yield
    finally:
        for h in handles:
            h.remove()


def _params(plan: ActPlan, fmt: NumberFormat, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not is_static(fmt):
        return None
    if key not in plan.ranges:
        raise QrobustError(f"'{key}' saw no calibration input, so it has no static {fmt.label} scale; exclude it "
                           "or check the calibration data")
    return static_params(fmt, plan.ranges[key])


def _linear_qdq(fmt: NumberFormat, params: tuple[torch.Tensor, torch.Tensor] | None):
    def pre(mod: nn.Module, args: tuple) -> tuple:
        return (fake_quantize_act(args[0], fmt, params),) + tuple(args[1:])
    return pre


def _kv_qdq(fmt: NumberFormat, params: dict[str, tuple[torch.Tensor, torch.Tensor] | None]):
    def fn(x: torch.Tensor, which: str) -> torch.Tensor:
        return fake_quantize_act(x, fmt, params[which])
    return fn


@contextmanager
def fake_quantizing(plan: ActPlan, linears: dict[str, nn.Linear], attns: dict[str, tuple[nn.Module, str]]
                    ) -> Iterator[None]:
    """Fake-quantize the linears' inputs and the KV cache, for the duration (hooks removed on exit,
    also on error). Static scales come from ``plan.ranges``."""
    handles = []
    try:
        if plan.act is not None:
            handles += [lin.register_forward_pre_hook(_linear_qdq(plan.act, _params(plan, plan.act, n)))
                        for n, lin in linears.items()]
        if plan.kv is not None:
            for n, (mod, arg) in attns.items():
                params = {w: _params(plan, plan.kv, f"{n}.{w}") for w in ("k", "v")}
                handles.append(hook_cache(mod, arg, _kv_qdq(plan.kv, params)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def activations_quantized(model: nn.Module, linears: dict[str, nn.Linear], spec: QuantSpec,
                          tokens: torch.Tensor | None) -> Iterator[ActPlan | None]:
    """In memory: calibrate ``spec``'s static scales on ``tokens`` (the model as it is now: quantized
    weights, FP activations), then fake-quantize activations and the KV cache for the duration."""
    plan = check_act(spec, tokens)
    if plan is None:
        yield None
        return
    attns = check_kv_model(model, spec.kv) if plan.kv is not None else {}
    if plan.static:
        assert tokens is not None
        device = next(model.parameters()).device
        with observing(plan, linears, attns), torch.no_grad(), calibrating():
            for b in torch.split(tokens, act_calibration_batch(spec)):
                model(input_ids=b.to(device), use_cache=False)
    with fake_quantizing(plan, linears, attns):
        yield plan


def block_attentions(block: nn.Module, prefix: str, plan: ActPlan) -> dict[str, tuple[nn.Module, str]]:
    """The attention modules of one decoder block (by full name) when the plan quantizes the KV cache."""
    return attention_modules(block, prefix) if plan.kv is not None else {}
