"""AWQ's searches on one block: the FP pass that captures what they need (``Capture``), the per-mapping
scale search and the per-linear clip search (the algorithm is described in ``awq.py``)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...errors import QrobustError
from ..formats.grid import group_bounds
from ..registry import QuantSpec
from .awq_mappings import Mapping
from .awq_options import AWQOptions, candidates, grid_quantize


def first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def weight_mean(W: list[torch.Tensor], group_size: int, opts: AWQOptions) -> torch.Tensor:
    """w̄: per input channel, the mean over rows of |W| normalised by its group's max."""
    if opts.profile == "autoawq":
        Wc = torch.cat([w.detach().float() for w in W])
        w_scale = torch.empty_like(Wc)
        for a, b in group_bounds(Wc.shape[1], group_size):
            g = Wc[:, a:b].abs()
            w_scale[:, a:b] = g / (g.amax(dim=1, keepdim=True) + 1e-6)
        return w_scale.mean(0)
    total, rows = 0, 0  # llm-compressor: in the weights' dtype, summed in float64 layer by layer
    for w in W:
        w = w.detach().abs()
        for a, b in group_bounds(w.shape[1], group_size):
            w[:, a:b] = w[:, a:b] / (w[:, a:b].amax(dim=1, keepdim=True) + 1e-6)
        total = total + w.sum(0, dtype=torch.float64)
        rows += w.shape[0]
    return total / rows


class Capture:
    """One FP pass of a block: per-batch inputs of inspected modules, |x| sums and clip samples per linear."""

    def __init__(self, block, inputs, linears, maps, clip_tokens, clip_names: set[str]):
        self.calls: dict[nn.Module, list[tuple[tuple, dict]]] = {m: [] for mp in maps for m in mp.inspect}
        self.abs_sum: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.scaled_first = {mp.layers[0] for mp in maps}  # x̄ is needed only for each mapping's input
        self.samples: dict[str, list[torch.Tensor]] = {n: [] for n in clip_names}
        total = sum(a[0].shape[0] * a[0].shape[1] if a[0].dim() == 3 else a[0].shape[0] for a, _ in inputs)
        self.stride = max(1, total // clip_tokens)
        self.offset: dict[str, int] = {}
        handles = []
        for mod in self.calls:
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, k: self.calls[m].append((a, k)), with_kwargs=True))
        for n, lin in linears.items():
            if n in self.scaled_first or n in self.samples:
                handles.append(lin.register_forward_pre_hook(lambda m, a, n=n: self._see(n, a[0])))
        try:
            self.outputs = [block(*a, **k) for a, k in inputs]
        finally:
            for h in handles:
                h.remove()

    def _see(self, name: str, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1])
        if name in self.scaled_first:
            s = x2.abs().float().sum(0)
            self.abs_sum[name] = self.abs_sum[name] + s if name in self.abs_sum else s
            self.count[name] = self.count.get(name, 0) + x2.shape[0]
        if name not in self.samples:
            return
        off = self.offset.get(name, 0)
        first = (-off) % self.stride
        self.samples[name].append(x2[first::self.stride].float().clone())
        self.offset[name] = off + x2.shape[0]


def _inspect_loss(mods: list[nn.Module], calls: dict[nn.Module, list], fp: dict[nn.Module, list]) -> float:
    num, den = 0.0, 0
    for mod in mods:
        for (a, k), ref in zip(calls[mod], fp[mod]):
            out = first_output(mod(*a, **k)).float()
            num += float((out - ref).pow(2).sum())
            den += ref.numel()
    return num / max(den, 1)


def search_scale(m: Mapping, linears, cap: Capture, spec: QuantSpec, opts: AWQOptions) -> dict[str, Any]:
    x_mean = cap.abs_sum[m.layers[0]] / cap.count[m.layers[0]]
    w_mean = weight_mean([linears[n].weight for n in m.layers], spec.group_size, opts)
    fp = {mod: [first_output(mod(*a, **k)).float() for a, k in cap.calls[mod]] for mod in m.inspect}
    originals = {n: linears[n].weight.detach().clone() for n in m.layers}

    def loss_with(s: torch.Tensor) -> float:
        for n in m.layers:
            if opts.profile == "autoawq":
                w = originals[n].float() * s.view(1, -1)
                q = grid_quantize(w, spec, opts).float() / s.view(1, -1)
            else:  # llm-compressor: W·s and Q(W·s)/s stored in the weights' dtype, s may be float64
                w = (originals[n] * s.view(1, -1)).to(originals[n].dtype)
                q = grid_quantize(w, spec, opts) / s.view(1, -1)
            linears[n].weight.copy_(q.to(originals[n].dtype))
        try:
            return _inspect_loss(m.inspect, cap.calls, fp)
        finally:
            for n in m.layers:
                linears[n].weight.copy_(originals[n])

    best, best_s, best_r, best_duo, history = math.inf, None, -1.0, False, []
    for r, duo in candidates(opts):
        if duo:
            s = (x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4)).clamp(min=1e-4)
        else:
            s = x_mean.pow(r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        if opts.profile != "autoawq":
            s[~torch.isfinite(s)] = 1
        loss = loss_with(s)
        history.append(loss)
        if loss < best:
            best, best_s, best_r, best_duo = loss, s, r, duo
    if best_s is None:
        raise QrobustError(f"AWQ: no finite loss in the scale search of '{m.name}' (non-finite activations?)")
    rtn = loss_with(torch.ones_like(x_mean))
    return {"scale": best_s, "ratio": best_r, "duo": best_duo, "loss": best, "rtn_loss": rtn}


def search_clip(w: torch.Tensor, x: torch.Tensor, spec: QuantSpec, opts: AWQOptions) -> torch.Tensor:
    """Per (row, group) clipping bound with the least output MSE on the sampled tokens x [n, in]."""
    bounds = group_bounds(w.shape[1], spec.group_size)
    best_max = torch.empty(w.shape[0], len(bounds))
    ts = spec.number_format().tensor_scale(w)  # two-level formats: the whole weight's, for every group
    steps = max(1, int(opts.max_shrink * opts.clip_grid))
    for gi, (a, b) in enumerate(bounds):
        wg, xg = w[:, a:b].float(), x[:, a:b].float()
        org_out = wg @ xg.T  # [rows, n]
        org_max = wg.abs().amax(dim=1, keepdim=True)
        best_err = torch.full((w.shape[0],), math.inf)
        best = org_max.squeeze(1).clone()
        for i in range(steps):
            mx = org_max * (1 - i / opts.clip_grid)
            q = grid_quantize(torch.clamp(wg, -mx, mx), spec, opts, group_size=-1, tensor_scale=ts)
            err = (q @ xg.T - org_out).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, mx.squeeze(1), best)
        best_max[:, gi] = best
    return best_max
