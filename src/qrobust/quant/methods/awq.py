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

Mappings (``awq_mappings.py``, a registry by architecture): Llama-like blocks (input norm → q,k,v
inspected through the attention; v → o when shapes match; post-attention norm → gate,up through the MLP;
up → down) and GPT-NeoX (input norm → fused qkv; post-attention norm → h_to_4h; the GELU before 4h_to_h
cannot take a folded scale, so 4h_to_h is only clipped, as the attention output dense is, as in
AutoAWQ). Other architectures get the generic rule: an input group is scaled when its input is exactly
the output of a norm or a linear (checked by tensor identity), inspected through its own linears.
Options, profiles and grids are in ``awq_options.py``; the searches in ``awq_search.py``.

Profiles (``profile=...``) follow the library users compare against:
- ``autoawq`` (default): all of the above; ratios i/n_grid, i = 0 … n_grid−1; AutoAWQ's grid.
- ``llmcompressor``: llm-compressor 0.14's ``AWQModifier`` followed by its ``QuantizationModifier``:
  candidates "no scaling" (s = 1) then duo-scaled ratios j/(n_grid−2), j = 0 … n_grid−2 (without duo
  scaling: j/(n_grid−1), j = 0 … n_grid−1); w̄ summed in float64 over the balanced linears' rows; non-finite
  scales set to 1; no clip search; compressed-tensors' grid (``formats/compressed_tensors.py``: min/max
  include 0, symmetric step 2·max|w|/(2^b−1) on levels −2^(b−1) … 2^(b−1)−1) in the search and for the final RTN.

Float formats (``format=nvfp4``, ``mxfp4``, ``fp8-e4m3-channel`` …, as llm-compressor runs AWQ with NVFP4):
the scale search, the clip search and the final RTN round on the format itself (its blocks, scales and,
for NVFP4, the tensor scale of the scaled weight W·s); integer formats keep the profile's integer grid.
Refused when the spec is made: activation quantization (the scales are searched against FP activations,
so the search would optimise the wrong function) and stochastic rounding (noisy losses in the search).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from ...errors import QrobustError
from ..base import BlockDone, BlockInputs, BlockJob, Flow, Quantizer
from ..calibration import tokens_of
from ..formats.grid import group_bounds
from ..timing import calibrating
from ..pipelines.blocks import (calibration_batches, decoder_layers, first_block_inputs, first_sample, next_inputs,
                                split_by_block)
from ..registry import QuantSpec, register_quantizer
from .awq_mappings import Mapping, generic_mappings, known_mappings
from .awq_options import AWQOptions, awq_options, grid_quantize
from .awq_search import Capture, first_output, search_clip, search_scale

AVOID_CLIP = ("q_", "k_", "query", "key", "Wqkv")  # AutoAWQ: clipping these hurts attention logits


def fold(m: Mapping, linears: dict[str, nn.Linear], s: torch.Tensor, inverse: bool = False) -> None:
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


def _architecture(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


@register_quantizer
class AWQ(Quantizer):
    name = "awq"
    needs_calibration = True
    streamable = True
    options_type = AWQOptions

    def parse_options(self, options: dict[str, Any]) -> AWQOptions:
        return awq_options(options)

    def calibration_flow(self, options: dict[str, Any]) -> Flow:
        """AutoAWQ calibrates every block on the FP model's activations (FP block outputs propagate)."""
        return "fp"

    def format_problem(self, spec: QuantSpec) -> str | None:
        if spec.act:
            return (f"AWQ cannot search its scales under activation quantization (act={spec.act}): it compares "
                    "outputs with FP activations; use gptq or rtn with act, or drop act")
        if spec.number_format().stochastic:
            return (f"AWQ's scale search needs deterministic rounding; {spec.format} rounds stochastically: drop -sr "
                    "or use rtn / gptq")
        return None

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
            raise QrobustError(f"AWQ: no decoder blocks found in architecture '{_architecture(model)}'; use gptq "
                               "or rtn for this model")
        in_blocks, rest = split_by_block(model, blocks, layers)
        with calibrating():
            inputs = first_block_inputs(model, blocks[0], calibration_batches(model, calibration, opts.calib_batch_size))
        info: dict[str, dict[str, float]] = {}
        prefix = {id(m): n for n, m in model.named_modules()}
        last = max((bi for bi, lin in in_blocks.items() if lin), default=-1)
        scaled_any = False
        for bi in range(last + 1):
            block = blocks[bi]
            base = prefix[id(block)] + "."
            local = {n[len(base):]: lin for n, lin in in_blocks[bi].items()}
            t0 = time.perf_counter()
            scaled, fp_outputs = awq_block(block, local, inputs, spec, opts, info, base)
            scaled_any |= scaled
            for n in local:
                info[base + n]["seconds"] = (time.perf_counter() - t0) / max(len(local), 1)
            if bi < last:
                inputs = next_inputs(fp_outputs, inputs)
        if in_blocks and last >= 0 and not scaled_any:
            raise QrobustError(f"AWQ: no scalable layer found in architecture '{_architecture(model)}' (no norm or "
                               "linear directly feeds a quantized linear); use gptq or rtn for this model")
        for n, lin in rest.items():  # outside the blocks: AWQ's grid, no scales
            w0 = lin.weight.detach().clone()
            lin.weight.copy_(grid_quantize(lin.weight, spec, opts))
            d = lin.weight.float() - w0.float()
            info[n] = {"rel_err": float(d.norm() / w0.float().norm().clamp_min(1e-30)), "mse": float(d.pow(2).mean())}
        return info

    def quantize_block(self, job: BlockJob, spec: QuantSpec) -> BlockDone:
        """One block on its FP calibration inputs; hands back the block's FP outputs for the next block.
        The FP weights for the errors come from ``job.original`` (layer streaming re-reads the files)."""
        local = {n[len(job.prefix):]: lin for n, lin in job.linears.items()}
        info: dict[str, dict[str, Any]] = {}
        assert job.inputs is not None
        _, fp_outputs = awq_block(job.module, local, job.inputs, spec, awq_options(dict(spec.options)), info,
                                  job.prefix, original=lambda n: job.original(job.prefix + n))
        return BlockDone(info, fp_outputs)


def awq_block(block: nn.Module, linears: dict[str, nn.Linear], inputs: BlockInputs, spec: QuantSpec,
              opts: AWQOptions, info: dict[str, dict[str, Any]], base: str,
              original: Callable[[str], torch.Tensor] | None = None) -> tuple[bool, list[torch.Tensor]]:
    """Scale, clip and quantize one block in place (``linears`` by block-local name, ``base`` the
    block's prefix in ``info``); return whether anything was scaled, and the block's FP outputs (the
    next block's inputs, as AutoAWQ propagates them). ``original(name)``: a linear's FP weight for its
    error, when the caller can give it again; by default the block's weights are copied first."""
    args0, kwargs0 = first_sample(*inputs[0])
    maps = None if opts.mapping == "generic" else known_mappings(block, set(linears))
    if maps is None:
        maps = generic_mappings(block, linears, lambda: block(*args0, **kwargs0))
    clip_names = {n for n in linears if opts.clip and not any(a in n for a in AVOID_CLIP)}
    with calibrating():  # the block's FP inputs of every linear and its FP outputs
        cap = Capture(block, inputs, linears, maps, opts.clip_tokens, clip_names)
    fp_outputs = [first_output(o) for o in cap.outputs]
    if original is None:
        originals = {n: lin.weight.detach().float().clone() for n, lin in linears.items()}
        original = originals.__getitem__
    found = [(m, search_scale(m, linears, cap, spec, opts)) for m in maps]
    scale_of = _fold_found(block, linears, found, (args0, kwargs0), opts, info, base)
    for n, lin in linears.items():
        s = scale_of.get(n)
        if cap.samples.get(n):
            _clip(lin, torch.cat(cap.samples[n]), s, spec, opts, info.setdefault(base + n, {}))
        lin.weight.copy_(grid_quantize(lin.weight, spec, opts))
        # errors against the FP layer: the equivalent weight is Q(W·s)/s
        eff = lin.weight.float() / s.view(1, -1) if s is not None else lin.weight.float()
        w0 = original(n).float()
        d = eff - w0
        info.setdefault(base + n, {}).update(rel_err=float(d.norm() / w0.norm().clamp_min(1e-30)),
                                             mse=float(d.pow(2).mean()))
        del w0, d
    return bool(scale_of), fp_outputs


def _fold_found(block: nn.Module, linears: dict[str, nn.Linear], found: list[tuple[Mapping, dict[str, Any]]],
                sample: tuple[tuple, dict], opts: AWQOptions, info: dict[str, dict[str, Any]], base: str
                ) -> dict[str, torch.Tensor]:
    """Fold each mapping's best scale, kept only where the block's FP function stays unchanged on one
    sample (else the prev op's output had other consumers and the fold is undone); the kept scales."""
    args0, kwargs0 = sample
    scale_of: dict[str, torch.Tensor] = {}
    ref = first_output(block(*args0, **kwargs0)).float()
    for m, res in found:
        fold(m, linears, res["scale"])
        out = first_output(block(*args0, **kwargs0)).float()
        if not torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max().clamp_min(1))):
            fold(m, linears, res["scale"], inverse=True)
            continue
        for n in m.layers:
            scale_of[n] = res["scale"]
            info.setdefault(base + n, {}).update(awq_ratio=res["ratio"], awq_loss=res["loss"],
                                                 awq_rtn_loss=res["rtn_loss"])
            if opts.profile != "autoawq":  # "no scaling" is its own candidate there
                info[base + n]["awq_duo"] = float(res["duo"])
    return scale_of


def _clip(lin: nn.Linear, x: torch.Tensor, s: torch.Tensor | None, spec: QuantSpec, opts: AWQOptions,
          info: dict[str, Any]) -> None:
    """Clip ``lin``'s weight per (row, group) to the bounds the clip search picks on tokens ``x``."""
    if s is not None:
        x = x / s.view(1, -1)
    mx = search_clip(lin.weight.detach(), x, spec, opts)
    w = lin.weight.detach().float()
    bounds = group_bounds(w.shape[1], spec.group_size)
    amax = torch.stack([w[:, a:b].abs().amax(dim=1) for a, b in bounds], dim=1).clamp_min(1e-30)
    for gi, (a, b) in enumerate(bounds):
        lim = mx[:, gi: gi + 1]
        w[:, a:b] = torch.clamp(w[:, a:b], -lim, lim)
    lin.weight.copy_(w.to(lin.weight.dtype))
    info["clip_shrink_mean"] = float((1 - mx / amax).mean())
