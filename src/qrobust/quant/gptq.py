"""GPTQ over a whole model: Hessians from calibration activations, sequential by decoder block.

``sequential`` (default on): block i+1 is calibrated on the outputs of the already quantized block i.
``true_sequential``: inside a block, linears are quantized in execution order, in groups that share an
input (e.g. q/k/v, then o, then gate/up, then down), each group's Hessian taken after the previous
groups were quantized. Groups are found by watching one forward pass, so any architecture works.
Hessians H = 2/N · Σ xᵀx are accumulated in fp32 (one per input group, shared by its linears).

Profiles reproduce the defaults of the libraries users compare against (see README):
- ``reference``      IST-DASLab GPTQ: damp 0.01, dynamic groups, no act-order, block-sequential.
- ``llmcompressor``  damp 0.01, act-order "static" (permuted columns, group parameters from the original
                     W by original column index), block-sequential, no true-sequential.
- ``gptqmodel``      damp 0.05 auto-increased by 0.01 on Cholesky failure, dynamic groups, no act-order,
                     true-sequential (its ``act_group_aware`` / MSE options are not plain GPTQ: not modelled).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, QrobustError
from .gptq_core import gptq_quantize
from .registry import Quantizer, QuantSpec, register_quantizer


@dataclass(frozen=True)
class GPTQOptions:
    profile: str = "gptqmodel"
    damp: float = 0.05
    damp_step: float = 0.01
    damp_max: float = 1.0
    block_size: int = 128
    act_order: bool = False
    static_groups: bool = False
    sequential: bool = True
    true_sequential: bool = True
    calib_batch_size: int = 8


PROFILES: dict[str, dict[str, Any]] = {
    "reference": dict(damp=0.01, damp_step=0.0, act_order=False, static_groups=False, true_sequential=False),
    "llmcompressor": dict(damp=0.01, damp_step=0.0, act_order=True, static_groups=True, true_sequential=False),
    "gptqmodel": dict(damp=0.05, damp_step=0.01, act_order=False, static_groups=False, true_sequential=True),
}


def gptq_options(options: dict[str, Any]) -> GPTQOptions:
    """Profile defaults, then explicit options on top; unknown keys or types are one clear line."""
    names = {f.name: f.type for f in fields(GPTQOptions)}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"unknown GPTQ option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    profile = options.get("profile", GPTQOptions.profile)
    if profile not in PROFILES:
        raise ConfigError(f"unknown GPTQ profile '{profile}'; known: {', '.join(PROFILES)}")
    opts = replace(GPTQOptions(), profile=profile, **PROFILES[profile])
    try:
        for k, v in options.items():
            default = getattr(GPTQOptions(), k)
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise TypeError
            elif isinstance(default, int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError
            elif isinstance(default, float):
                v = float(v)
            opts = replace(opts, **{k: v})
    except (TypeError, ValueError):
        raise ConfigError(f"GPTQ option '{k}' has the wrong type: {v!r}") from None
    if not 0 <= opts.damp < 1 or opts.block_size < 1 or opts.calib_batch_size < 1:
        raise ConfigError("GPTQ options out of range: need 0 <= damp < 1, block_size >= 1, calib_batch_size >= 1")
    return opts


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of decoder blocks (length = num_hidden_layers), found by shape not by name."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and n:
            return mod
    return None


class _Stop(Exception):
    pass


class _HessianHooks:
    """Accumulate S = Σ xᵀx (fp32) and the token count N per input group; H = 2/N · S."""

    def __init__(self, linears: dict[str, nn.Linear], groups: list[list[str]]):
        self.S: dict[int, torch.Tensor] = {}
        self.N: dict[int, int] = {}
        self.group_of = {n: gi for gi, g in enumerate(groups) for n in g}
        self.handles = []
        leaders = {g[0] for g in groups}
        for name, lin in linears.items():
            if name in leaders and name in self.group_of:
                self.handles.append(lin.register_forward_hook(self._hook(self.group_of[name])))

    def _hook(self, gi: int):
        def fn(mod, inp, out):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
            if gi not in self.S:
                self.S[gi] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                self.N[gi] = 0
            self.S[gi].addmm_(x.T, x)
            self.N[gi] += x.shape[0]
        return fn

    def hessian(self, name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        gi = self.group_of[name]
        S, N = self.S[gi], self.N[gi]
        return 2.0 / N * S, S, N

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _input_groups(layer: nn.Module, linears: dict[str, nn.Linear], run) -> list[list[str]]:
    """Linears in execution order, grouped by identical input tensor (found by one watched forward).

    The input tensors themselves are kept until grouping is done: comparing ``id()`` of freed tensors
    would let a new tensor reuse an old address and merge unrelated linears into one group.
    """
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [lin.register_forward_hook(lambda m, i, o, n=n: seen.append((n, i[0]))) for n, lin in linears.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last: torch.Tensor | None = None
    for n, x in seen:
        if any(n in g for g in groups):
            continue
        if last is not None and x is last:
            groups[-1].append(n)
        else:
            groups.append([n])
            last = x
    missing = [n for n in linears if not any(n in g for g in groups)]
    if missing:
        groups.append(missing)  # never called during calibration: reported as such when quantized
    return groups


def _quantize_group(names: list[str], linears: dict[str, nn.Linear], hooks: _HessianHooks, spec: QuantSpec,
                    opts: GPTQOptions, info: dict[str, dict[str, float]]) -> None:
    for name in names:
        lin = linears[name]
        t0 = time.perf_counter()
        if hooks.group_of.get(name) not in hooks.S:
            raise QrobustError(f"GPTQ: layer '{name}' received no calibration input; exclude it or check the model")
        H, S, N = hooks.hessian(name)
        res = gptq_quantize(lin.weight, H, spec.bits, spec.group_size, spec.sym, damp=opts.damp,
                            block_size=opts.block_size, act_order=opts.act_order, static_groups=opts.static_groups,
                            damp_step=opts.damp_step, damp_max=opts.damp_max, name=name)
        d = (res.weight - lin.weight.float()).double()
        recon = float(torch.einsum("ij,jk,ik->", d, S.double(), d)) / N
        lin.weight.copy_(res.weight.to(lin.weight.dtype))
        info[name] = {"recon_loss": recon, "damp": res.damp, "gptq_loss": res.loss,
                      "seconds": time.perf_counter() - t0}


@register_quantizer
class GPTQ(Quantizer):
    name = "gptq"
    needs_calibration = True

    def check_options(self, options: dict[str, Any]) -> None:
        gptq_options(options)

    @torch.no_grad()
    def quantize_layers(self, model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec,
                        calibration: torch.Tensor | None) -> dict[str, dict[str, float]]:
        opts = gptq_options(dict(spec.options))
        assert calibration is not None
        batches = list(torch.split(calibration, opts.calib_batch_size))
        device = next(model.parameters()).device
        batches = [b.to(device) for b in batches]
        info: dict[str, dict[str, float]] = {}
        blocks = decoder_layers(model) if opts.sequential else None
        in_blocks = {}
        if blocks is not None:
            prefix = {id(m): n for n, m in model.named_modules()}
            for bi, block in enumerate(blocks):
                base = prefix[id(block)]
                in_blocks[bi] = {n: l for n, l in layers.items() if n.startswith(base + ".")}
        rest = {n: l for n, l in layers.items() if not any(n in d for d in in_blocks.values())}
        if blocks is not None and any(in_blocks.values()):
            self._sequential(model, blocks, in_blocks, batches, spec, opts, info)
        if rest:
            self._whole_model(model, rest, batches, spec, opts, info)
        return info

    def _whole_model(self, model, linears, batches, spec, opts, info) -> None:
        """One pass of the (FP or partly quantized) model gives every Hessian at once."""
        def run():
            for b in batches:
                model(input_ids=b, use_cache=False)
        groups = _input_groups(model, linears, lambda: model(input_ids=batches[0], use_cache=False))
        hooks = _HessianHooks(linears, groups)
        try:
            run()
        finally:
            hooks.remove()
        for g in groups:
            _quantize_group(g, linears, hooks, spec, opts, info)

    def _sequential(self, model, blocks, in_blocks, batches, spec, opts, info) -> None:
        first = blocks[0]
        cache: list[tuple[tuple, dict]] = []

        def grab(mod, args, kwargs):
            cache.append((args, kwargs))
            raise _Stop

        h = first.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for b in batches:
                try:
                    model(input_ids=b, use_cache=False)
                except _Stop:
                    pass
        finally:
            h.remove()
        for bi, block in enumerate(blocks):
            linears = in_blocks.get(bi, {})
            if linears:
                def run_block(block=block):
                    for args, kwargs in cache:
                        block(*args, **kwargs)
                groups = _input_groups(block, linears, lambda block=block: block(*cache[0][0], **cache[0][1]))
                steps = groups if opts.true_sequential else [sum(groups, [])]
                for step in steps:
                    step_groups = [g for g in groups if g[0] in step]
                    sub = {n: linears[n] for n in step}
                    hooks = _HessianHooks(sub, step_groups)
                    try:
                        run_block()
                    finally:
                        hooks.remove()
                    for g in step_groups:
                        _quantize_group(g, linears, hooks, spec, opts, info)
            # outputs of the (now quantized) block are the next block's inputs
            new_cache = []
            for args, kwargs in cache:
                out = block(*args, **kwargs)
                hidden = out[0] if isinstance(out, (tuple, list)) else out
                new_cache.append(((hidden,) + tuple(args[1:]), kwargs))
            cache = new_cache
