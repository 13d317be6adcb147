"""AWQ (Lin et al. 2023) as AutoAWQ runs it: activation-aware per-channel scales, clip search, then RTN.

Per decoder block, on the FP model's activations (AutoAWQ propagates FP block outputs):
1. Scale search per mapping (an op whose output feeds a set of linears, e.g. input norm → q/k/v):
   x̄ = per-channel mean |x|, w̄ = per-channel mean of |W| normalised per group; for ratio r in
   0, 1/n, …, (n-1)/n: s = x̄^r / (w̄^(1-r) + 1e-4) (duo scaling; x̄^r without), s /= √(max s · min s);
   loss = MSE between the FP output of the inspected module (the attention block, the MLP, or the
   linears themselves) and its output with W ← Q(W·s)/s. The best s is folded: the preceding op's
   output is divided by s (norm weight/bias, or the rows of a preceding linear), the linears' columns
   are multiplied by s — the FP function is unchanged (checked on one sample, else the fold is undone).
2. Clip search per linear (not q/k, as AutoAWQ): per output row and group, shrink the clipping range
   max|w|·(1 - i/n) for i < max_shrink·n, keep the one with the least output MSE on ≤ 512 tokens.
3. RTN on AWQ's grid: zero point (``sym=False``, AutoAWQ's default) from min/max of each group *without*
   widening it to include 0; symmetric: scale = max|w| / (2^(b-1) - 1), levels -2^(b-1) … 2^(b-1) - 1.

Mappings: Llama-like blocks (input norm → q,k,v inspected through the attention; v → o when shapes match;
post-attention norm → gate,up through the MLP; up → down) and GPT-NeoX (input norm → fused qkv;
post-attention norm → h_to_4h; the GELU before 4h_to_h cannot take a folded scale, so 4h_to_h is only
clipped, as the attention output dense is, as in AutoAWQ). Other architectures get the generic rule:
an input group is scaled when its input is exactly the output of a norm or a linear (checked by tensor
identity), inspected through its own linears.

Profiles (``profile=...``) follow the library users compare against:
- ``autoawq`` (default): all of the above; ratios i/n_grid, i = 0 … n_grid−1; AutoAWQ's grid.
- ``llmcompressor``: llm-compressor 0.14's ``AWQModifier`` followed by its ``QuantizationModifier``:
  candidates "no scaling" (s = 1) then duo-scaled ratios j/(n_grid−2), j = 0 … n_grid−2 (without duo
  scaling: j/(n_grid−1), j = 0 … n_grid−1); w̄ summed in float64 over the balanced linears' rows; non-finite
  scales set to 1; no clip search; compressed-tensors' grid (``grid.py``: min/max include 0, symmetric
  step 2·max|w|/(2^b−1) on levels −2^(b−1) … 2^(b−1)−1) in the search and for the final RTN.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from ...errors import ConfigError, QrobustError
from ..calibration import tokens_of
from ..pipelines.blocks import calibration_batches, decoder_layers, first_block_inputs, first_sample, next_inputs, split_by_block
from ..formats.grid import fake_quantize, group_bounds
from ..registry import Quantizer, QuantSpec, register_quantizer, typed_options
from ..pipelines.staged import probe_block

AVOID_CLIP = ("q_", "k_", "query", "key", "Wqkv")  # AutoAWQ: clipping these hurts attention logits


GRIDS = ("autoawq", "compressed-tensors")


@dataclass(frozen=True)
class AWQOptions:
    profile: str = "autoawq"
    quant_grid: str = "autoawq"  # autoawq | compressed-tensors
    duo_scaling: bool = True
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_tokens: int = 512
    calib_batch_size: int = 8
    mapping: str = "auto"  # auto (known architectures, else generic) | generic


PROFILES: dict[str, dict[str, Any]] = {
    "autoawq": dict(quant_grid="autoawq", clip=True),
    "llmcompressor": dict(quant_grid="compressed-tensors", clip=False),
}


def awq_options(options: dict[str, Any]) -> AWQOptions:
    """Profile defaults, then explicit options on top; unknown keys, types or values are one clear line."""
    profile = options.get("profile", AWQOptions.profile)
    if profile not in PROFILES:
        raise ConfigError(f"unknown AWQ profile '{profile}'; known: {', '.join(PROFILES)}")
    opts = typed_options(replace(AWQOptions(), profile=profile, **PROFILES[profile]), options, "AWQ")
    if opts.quant_grid not in GRIDS:
        raise ConfigError(f"AWQ option quant_grid must be one of {', '.join(GRIDS)}, got '{opts.quant_grid}'")
    if opts.profile == "llmcompressor" and opts.n_grid < (3 if opts.duo_scaling else 2):
        raise ConfigError("AWQ profile llmcompressor needs n_grid >= 3 with duo scaling (>= 2 without): "
                          "its ratios are j/(n_grid-2) (j/(n_grid-1))")
    if opts.mapping not in ("auto", "generic"):
        raise ConfigError(f"AWQ option mapping must be 'auto' or 'generic', got '{opts.mapping}'")
    if opts.n_grid < 1 or opts.clip_grid < 1 or not 0 <= opts.max_shrink < 1 or opts.clip_tokens < 1 \
            or opts.calib_batch_size < 1:
        raise ConfigError("AWQ options out of range: need n_grid, clip_grid, clip_tokens, calib_batch_size >= 1 "
                          "and 0 <= max_shrink < 1")
    return opts


def awq_fake_quantize(w: torch.Tensor, bits: int, group_size: int, zero_point: bool) -> torch.Tensor:
    """AutoAWQ's ``pseudo_quantize_tensor`` per group along the input dimension (fp32 math)."""
    out = torch.empty_like(w, dtype=torch.float32)
    for a, b in group_bounds(w.shape[1], group_size):
        x = w[:, a:b].float()
        if zero_point:
            hi, lo = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
            qmax = 2 ** bits - 1
            scale = (hi - lo).clamp(min=1e-5) / qmax
            zero = (-torch.round(lo / scale)).clamp(0, qmax)
            out[:, a:b] = (torch.clamp(torch.round(x / scale) + zero, 0, qmax) - zero) * scale
        else:
            qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
            scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / qmax
            out[:, a:b] = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    return out.to(w.dtype)


def grid_quantize(w: torch.Tensor, spec: QuantSpec, opts: AWQOptions, group_size: int | None = None) -> torch.Tensor:
    """RTN on the profile's grid: AutoAWQ's (zero point when asymmetric) or compressed-tensors'."""
    g = spec.group_size if group_size is None else group_size
    if opts.quant_grid == "autoawq":
        return awq_fake_quantize(w, spec.bits, g, not spec.sym)
    return fake_quantize(w, spec.bits, g, spec.sym, "compressed-tensors")


def candidates(opts: AWQOptions) -> list[tuple[float, bool]]:
    """(ratio, duo scaling) in search order; the first of equal losses wins."""
    n = opts.n_grid
    if opts.profile == "autoawq":
        return [(i / n, opts.duo_scaling) for i in range(n)]
    if opts.duo_scaling:  # llm-compressor: "no scaling" first, then a grid that includes ratio 1
        return [(0.0, False)] + [(j / (n - 2), True) for j in range(n - 1)]
    return [(j / (n - 1), False) for j in range(n)]


def _weight_mean(W: list[torch.Tensor], group_size: int, opts: AWQOptions) -> torch.Tensor:
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


@dataclass
class Mapping:
    """Scale the input channels of ``layers``; fold the inverse into ``prev``; judge by ``inspect``'s output."""

    name: str
    prev: nn.Module
    layers: list[str]  # block-local linear names, scaled together
    inspect: list[nn.Module]  # modules whose output MSE is the loss (the linears themselves if no parent)


def _is_norm(mod: nn.Module, dim: int) -> bool:
    w = getattr(mod, "weight", None)
    return "norm" in type(mod).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == dim


def _known_mappings(block: nn.Module, names: set[str]) -> list[Mapping] | None:
    mods = dict(block.named_modules())
    llama = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"}
    neox = {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
            "input_layernorm", "post_attention_layernorm"}
    if llama <= set(mods):
        maps = [Mapping("attn_in", mods["input_layernorm"], ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                        [mods["self_attn"]])]
        if mods["self_attn.v_proj"].weight.shape == mods["self_attn.o_proj"].weight.shape:
            maps.append(Mapping("attn_out", mods["self_attn.v_proj"], ["self_attn.o_proj"], [mods["self_attn.o_proj"]]))
        maps.append(Mapping("mlp_in", mods["post_attention_layernorm"], ["mlp.gate_proj", "mlp.up_proj"], [mods["mlp"]]))
        maps.append(Mapping("mlp_out", mods["mlp.up_proj"], ["mlp.down_proj"], [mods["mlp.down_proj"]]))
    elif neox <= set(mods):
        maps = [Mapping("attn_in", mods["input_layernorm"], ["attention.query_key_value"],
                        [mods["attention.query_key_value"]]),
                Mapping("mlp_in", mods["post_attention_layernorm"], ["mlp.dense_h_to_4h"], [mods["mlp.dense_h_to_4h"]])]
    else:
        return None
    # a mapping scales all its linears or none (an unselected one would be left scaled but unquantized,
    # and its prev op must not be a linear we quantize before folding)
    return [m for m in maps if set(m.layers) <= names]


def _generic_mappings(block: nn.Module, linears: dict[str, nn.Linear], run_one) -> list[Mapping]:
    """Scale an input group where its input tensor *is* the output of a norm or a linear in the block."""
    producer: dict[int, nn.Module] = {}
    keep: list[torch.Tensor] = []  # keep outputs alive while ids are compared

    def on_exit(mod, inp, out):
        if isinstance(out, torch.Tensor):
            producer[id(out)] = mod
            keep.append(out)
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(on_exit) for m in block.modules() if m is not block]
    handles += [lin.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0])) for n, lin in linears.items()]
    try:
        probe = probe_block(block, linears, run_one)
        run_one()
    finally:
        for h in handles:
            h.remove()
    maps = []
    for group in probe.groups:
        x = inputs.get(group[0])
        prev = producer.get(id(x)) if x is not None else None
        if prev is None:
            continue
        d = x.shape[-1]
        if _is_norm(prev, d) or (isinstance(prev, nn.Linear) and prev.out_features == d):
            maps.append(Mapping(f"group:{group[0]}", prev, list(group), [linears[n] for n in group]))
    return maps


def _fold(m: Mapping, linears: dict[str, nn.Linear], s: torch.Tensor, inverse: bool = False) -> None:
    """prev output ÷ s, linears' input columns × s (or the reverse, to undo). A float64 ``s`` (the
    llmcompressor profile's) is applied in float64 and rounded once, as llm-compressor does."""
    f = (1 / s) if inverse else s

    def cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == torch.float64 else t.to(like.dtype)
    prev = m.prev
    if isinstance(prev, nn.Linear):
        n = f.numel()
        prev.weight[-n:].div_(cast(f.view(-1, 1), prev.weight))
        if prev.bias is not None:
            prev.bias[-n:].div_(cast(f, prev.bias))
    else:
        prev.weight.div_(cast(f, prev.weight))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(cast(f, prev.bias))
    for n in m.layers:
        linears[n].weight.mul_(cast(f.view(1, -1), linears[n].weight))


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _Capture:
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
            out = _first(mod(*a, **k)).float()
            num += float((out - ref).pow(2).sum())
            den += ref.numel()
    return num / max(den, 1)


def _search_scale(m: Mapping, linears, cap: _Capture, spec: QuantSpec, opts: AWQOptions) -> dict[str, Any]:
    x_mean = cap.abs_sum[m.layers[0]] / cap.count[m.layers[0]]
    w_mean = _weight_mean([linears[n].weight for n in m.layers], spec.group_size, opts)
    fp = {mod: [_first(mod(*a, **k)).float() for a, k in cap.calls[mod]] for mod in m.inspect}
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


def _search_clip(w: torch.Tensor, x: torch.Tensor, spec: QuantSpec, opts: AWQOptions) -> torch.Tensor:
    """Per (row, group) clipping bound with the least output MSE on the sampled tokens x [n, in]."""
    bounds = group_bounds(w.shape[1], spec.group_size)
    best_max = torch.empty(w.shape[0], len(bounds))
    steps = max(1, int(opts.max_shrink * opts.clip_grid))
    for gi, (a, b) in enumerate(bounds):
        wg, xg = w[:, a:b].float(), x[:, a:b].float()
        org_out = wg @ xg.T  # [rows, n]
        org_max = wg.abs().amax(dim=1, keepdim=True)
        best_err = torch.full((w.shape[0],), math.inf)
        best = org_max.squeeze(1).clone()
        for i in range(steps):
            mx = org_max * (1 - i / opts.clip_grid)
            q = grid_quantize(torch.clamp(wg, -mx, mx), spec, opts, group_size=-1)
            err = (q @ xg.T - org_out).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, mx.squeeze(1), best)
        best_max[:, gi] = best
    return best_max


@register_quantizer
class AWQ(Quantizer):
    name = "awq"
    needs_calibration = True

    def check_options(self, options: dict[str, Any]) -> None:
        awq_options(options)

    def touched_params(self, model, layers, spec) -> dict[str, torch.Tensor]:
        """Everything inside the decoder blocks besides the selected weights (norms, biases): folds touch them."""
        blocks = decoder_layers(model)
        if blocks is None:
            return {}
        chosen = {id(lin.weight) for lin in layers.values()}
        return {f"{bi}.{n}": p for bi, blk in enumerate(blocks) for n, p in blk.named_parameters()
                if id(p) not in chosen}

    @torch.no_grad()
    def quantize_layers(self, model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec,
                        calibration: torch.Tensor | None) -> dict[str, dict[str, float]]:
        opts = awq_options(dict(spec.options))
        calibration = tokens_of(calibration)
        assert calibration is not None
        for n, lin in layers.items():
            group_bounds(lin.in_features, spec.group_size)  # refuse a bad group size before any work
        blocks = decoder_layers(model)
        if blocks is None:
            arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise QrobustError(f"AWQ: no decoder blocks found in architecture '{arch}'; use gptq or rtn for this model")
        in_blocks, rest = split_by_block(model, blocks, layers)
        batches = calibration_batches(model, calibration, opts.calib_batch_size)
        inputs = first_block_inputs(model, blocks[0], batches)
        info: dict[str, dict[str, float]] = {}
        prefix = {id(m): n for n, m in model.named_modules()}
        last = max((bi for bi, lin in in_blocks.items() if lin), default=-1)
        scaled_any = False
        for bi in range(last + 1):
            block = blocks[bi]
            base = prefix[id(block)] + "."
            local = {n[len(base):]: lin for n, lin in in_blocks[bi].items()}
            t0 = time.perf_counter()
            scaled, fp_outputs = self.quantize_block(block, local, inputs, spec, opts, info, base)
            scaled_any |= scaled
            for n in local:
                info[base + n]["seconds"] = (time.perf_counter() - t0) / max(len(local), 1)
            if bi < last:
                inputs = next_inputs(fp_outputs, inputs)
        if in_blocks and last >= 0 and not scaled_any:
            arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise QrobustError(f"AWQ: no scalable layer found in architecture '{arch}' (no norm or linear directly "
                               "feeds a quantized linear); use gptq or rtn for this model")
        for n, lin in rest.items():  # outside the blocks: AWQ's grid, no scales
            w0 = lin.weight.detach().clone()
            lin.weight.copy_(grid_quantize(lin.weight, spec, opts))
            d = lin.weight.float() - w0.float()
            info[n] = {"rel_err": float(d.norm() / w0.float().norm().clamp_min(1e-30)), "mse": float(d.pow(2).mean())}
        return info

    def quantize_block(self, block, linears, inputs, spec, opts, info, base,
                       original: Callable[[str], torch.Tensor] | None = None) -> tuple[bool, list[torch.Tensor]]:
        """Scale, clip and quantize one block in place; return whether anything was scaled, and the
        block's FP outputs (the next block's inputs, as AutoAWQ propagates them). ``original(name)``: a
        linear's FP weight for its error, when the caller can give it again (layer streaming re-reads
        it from the files); by default the block's weights are copied first."""
        args0, kwargs0 = first_sample(*inputs[0])
        maps = None if opts.mapping == "generic" else _known_mappings(block, set(linears))
        if maps is None:
            maps = _generic_mappings(block, linears, lambda: block(*args0, **kwargs0))
        clip_names = {n for n in linears if opts.clip and not any(a in n for a in AVOID_CLIP)}
        cap = _Capture(block, inputs, linears, maps, opts.clip_tokens, clip_names)
        fp_outputs = [_first(o) for o in cap.outputs]
        if original is None:
            originals = {n: lin.weight.detach().float().clone() for n, lin in linears.items()}
            original = originals.__getitem__
        found = [(m, _search_scale(m, linears, cap, spec, opts)) for m in maps]
        scale_of: dict[str, torch.Tensor] = {}
        ref = _first(block(*args0, **kwargs0)).float()
        for m, res in found:
            _fold(m, linears, res["scale"])
            out = _first(block(*args0, **kwargs0)).float()
            if not torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max().clamp_min(1))):
                _fold(m, linears, res["scale"], inverse=True)  # the prev op's output had other consumers
                continue
            for n in m.layers:
                scale_of[n] = res["scale"]
                info.setdefault(base + n, {}).update(awq_ratio=res["ratio"], awq_loss=res["loss"],
                                                     awq_rtn_loss=res["rtn_loss"])
                if opts.profile != "autoawq":  # "no scaling" is its own candidate there
                    info[base + n]["awq_duo"] = float(res["duo"])
        for n, lin in linears.items():
            s = scale_of.get(n)
            if cap.samples.get(n):
                x = torch.cat(cap.samples[n])
                if s is not None:
                    x = x / s.view(1, -1)
                mx = _search_clip(lin.weight.detach(), x, spec, opts)
                w = lin.weight.detach().float()
                bounds = group_bounds(w.shape[1], spec.group_size)
                amax = torch.stack([w[:, a:b].abs().amax(dim=1) for a, b in bounds], dim=1).clamp_min(1e-30)
                for gi, (a, b) in enumerate(bounds):
                    lim = mx[:, gi: gi + 1]
                    w[:, a:b] = torch.clamp(w[:, a:b], -lim, lim)
                lin.weight.copy_(w.to(lin.weight.dtype))
                info.setdefault(base + n, {})["clip_shrink_mean"] = float((1 - mx / amax).mean())
            lin.weight.copy_(grid_quantize(lin.weight, spec, opts))
            # errors against the FP layer: the equivalent weight is Q(W·s)/s
            eff = lin.weight.float() / s.view(1, -1) if s is not None else lin.weight.float()
            w0 = original(n).float()
            d = eff - w0
            info.setdefault(base + n, {}).update(rel_err=float(d.norm() / w0.norm().clamp_min(1e-30)),
                                                 mse=float(d.pow(2).mean()))
            del w0, d
        return bool(scale_of), fp_outputs
