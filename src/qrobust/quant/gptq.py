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
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, QrobustError
from .gptq_core import gptq_quantize
from .hessian import XtX
from .staged import BlockProbe, StagedBlock, _Stop, probe_block
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
    replay: bool = True


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


class _Hessians:
    """S = Σ xᵀx and N per input group (fp32); H = 2/N · S. Fed by hooks or by a staged block run."""

    def __init__(self, groups: list[list[str]]):
        self.group_of = {n: gi for gi, g in enumerate(groups) for n in g}
        self.acc: dict[int, XtX] = {}

    def adder(self, leader: str) -> Callable[[torch.Tensor], None]:
        gi = self.group_of[leader]

        def add(x: torch.Tensor) -> None:
            if gi not in self.acc:
                self.acc[gi] = XtX(x.shape[-1], x.device)
            self.acc[gi].add(x)
        return add

    def has(self, name: str) -> bool:
        return self.group_of.get(name) in self.acc

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        acc = self.acc[self.group_of[name]]
        S = acc.full()
        return 2.0 / acc.n * S, S, acc.n


def _first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The first sequence of a calibration batch (every tensor whose dim 0 is the batch is sliced):
    enough to watch which linears share inputs, at 1/batch of the cost."""
    x = args[0]
    n = x.shape[0]

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            return v[:1]
        if type(v) in (tuple, list):
            return type(v)(cut(u) for u in v)
        return v
    if n == 1:
        return args, kwargs
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _input_groups(layer: nn.Module, linears: dict[str, nn.Linear], run) -> list[list[str]]:
    """Linears in execution order, grouped by identical input tensor (found by one watched forward)."""
    return probe_block(layer, linears, run).groups


def _quantize_group(names: list[str], linears: dict[str, nn.Linear], hessians: _Hessians, spec: QuantSpec,
                    opts: GPTQOptions, info: dict[str, dict[str, float]]) -> None:
    """One GPTQ call for the whole group: its linears share H, and GPTQ treats rows independently,
    so stacking their weights ([Σ out, in]) gives each layer's own result with fewer column steps."""
    t0 = time.perf_counter()
    missing = [n for n in names if not hessians.has(n)]
    if missing:
        raise QrobustError(f"GPTQ: layer '{missing[0]}' received no calibration input; exclude it or check the model")
    H, S, N = hessians.get(names[0])
    weights = [linears[n].weight for n in names]
    stacked = torch.cat([w.detach().float() for w in weights]) if len(names) > 1 else weights[0]
    res = gptq_quantize(stacked, H, spec.bits, spec.group_size, spec.sym, damp=opts.damp,
                        block_size=opts.block_size, act_order=opts.act_order, static_groups=opts.static_groups,
                        damp_step=opts.damp_step, damp_max=opts.damp_max, name=", ".join(names))
    seconds = time.perf_counter() - t0
    Sd = S.double()
    row = 0
    for name, w in zip(names, weights):
        rows = w.shape[0]
        q = res.weight[row: row + rows]
        d = (q - w.float()).double()
        recon = float(torch.einsum("ij,jk,ik->", d, Sd, d)) / N
        w.copy_(q.to(w.dtype))
        info[name] = {"recon_loss": recon, "damp": res.damp, "gptq_loss": float(res.row_loss[row: row + rows].sum()),
                      "seconds": seconds * rows / stacked.shape[0]}
        row += rows


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
        groups = _input_groups(model, linears, lambda: model(input_ids=batches[0], use_cache=False))
        hessians = _Hessians(groups)
        handles = [linears[g[0]].register_forward_pre_hook(lambda m, a, add=hessians.adder(g[0]): add(a[0]))
                   for g in groups]
        try:
            for b in batches:
                model(input_ids=b, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        for g in groups:
            _quantize_group(g, linears, hessians, spec, opts, info)

    def _sequential(self, model, blocks, in_blocks, batches, spec, opts, info) -> None:
        """Block by block; each block's inputs are the previous (quantized) block's outputs."""
        inputs: list[tuple[tuple, dict]] = []

        def grab(mod, args, kwargs):
            inputs.append((args, kwargs))
            raise _Stop

        h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for b in batches:
                try:
                    model(input_ids=b, use_cache=False)
                except _Stop:
                    pass
        finally:
            h.remove()
        last = max(bi for bi, lin in in_blocks.items() if lin)
        for bi in range(last + 1):
            block, linears = blocks[bi], in_blocks.get(bi, {})
            args0, kwargs0 = _first_sample(*inputs[0])
            probe = probe_block(block, linears, lambda: block(*args0, **kwargs0)) if linears else None
            staged = StagedBlock(block, inputs, linears, probe or BlockProbe(groups=[]), replay=opts.replay)
            groups = probe.groups if probe else []
            steps = [[g] for g in groups] if opts.true_sequential else ([groups] if groups else [])
            for step in steps:
                hessians = _Hessians(groups)
                staged.run({g[0]: hessians.adder(g[0]) for g in step}, stop_at=step[-1][0])
                for g in step:
                    _quantize_group(g, linears, hessians, spec, opts, info)
                    staged.mark_quantized(g)
            if bi < last:  # the quantized block's outputs are the next block's inputs
                outs = staged.run({}, stop_at=None)
                inputs = [(((o[0] if isinstance(o, (tuple, list)) else o),) + tuple(a[1:]), k)
                          for o, (a, k) in zip(outs, inputs)]
            staged.release()
