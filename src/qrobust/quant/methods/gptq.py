"""GPTQ over a whole model: Hessians from calibration activations, sequential by decoder block.

``sequential`` (default on): block i+1 is calibrated on the outputs of the already quantized block i.
``true_sequential``: inside a block, linears are quantized in execution order, in groups that share an
input (e.g. q/k/v, then o, then gate/up, then down), each group's Hessian taken after the previous
groups were quantized. Groups are found by watching one forward pass, so any architecture works.
Hessians H = 2/N · Σ xᵀx are accumulated in fp32 (one per input group, shared by its linears).
Any weight format (``spec.format``: NVFP4, MXFP4/6/8, FP8, integers) is rounded column by column by the
format itself; stochastic ones (``-sr``) draw from a generator seeded by the layer group's names
(``NumberFormat.generator``), so in-memory, streamed and repeated runs give the same numbers.

Profiles reproduce the defaults of the libraries users compare against (see README):
- ``reference``      IST-DASLab GPTQ: damp 0.01, dynamic groups, no act-order, block-sequential.
- ``llmcompressor``  damp 0.01, act-order "static" (permuted columns, group parameters from the original
                     W by original column index), block-sequential, no true-sequential, and compressed-tensors'
                     grid (symmetric scale 2·absmax/(2^b−1), no reference quirk; see
                     ``formats/compressed_tensors.py``).
- ``gptqmodel``      damp 0.05 auto-increased by 0.01 on Cholesky failure, dynamic groups, no act-order,
                     true-sequential (its ``act_group_aware`` / MSE options are not plain GPTQ: not modelled).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ...errors import ConfigError, QrobustError
from .gptq_core import gptq_quantize
from ..formats.grid import GRIDS, LayerGrid
from ..formats.number_format import NumberFormat
from .hessian import XtX
from .rtn import check_smoothquant
from ..calibration import memoised, tokens_of
from ..timing import calibrating
from ..pipelines.blocks import (calibration_batches, decoder_layers, first_block_inputs, first_sample, next_inputs,
                     split_by_block)
from ..pipelines.staged import BlockProbe, StagedBlock, probe_block
from ..base import BlockDone, BlockInputs, BlockJob, Flow, Quantizer, typed_options
from ..registry import QuantSpec, register_quantizer


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
    quant_grid: str = "reference"  # reference | compressed-tensors (quant/formats/)
    smoothquant: float = 0.0  # SmoothQuant's α for W8A8 (pipelines/smoothquant.py); 0: off


PROFILES: dict[str, dict[str, Any]] = {
    "reference": dict(damp=0.01, damp_step=0.0, act_order=False, static_groups=False, true_sequential=False,
                      quant_grid="reference"),
    "llmcompressor": dict(damp=0.01, damp_step=0.0, act_order=True, static_groups=True, true_sequential=False,
                          quant_grid="compressed-tensors"),
    "gptqmodel": dict(damp=0.05, damp_step=0.01, act_order=False, static_groups=False, true_sequential=True,
                      quant_grid="reference"),
}


def gptq_options(options: dict[str, Any]) -> GPTQOptions:
    """Profile defaults, then explicit options on top; unknown keys or types are one clear line."""
    unknown = sorted(set(options) - {f.name for f in fields(GPTQOptions)})
    if unknown:
        raise ConfigError(f"unknown GPTQ option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(f.name for f in fields(GPTQOptions)))}")
    profile = options.get("profile", GPTQOptions.profile)
    if profile not in PROFILES:
        raise ConfigError(f"unknown GPTQ profile '{profile}'; known: {', '.join(PROFILES)}")
    opts = typed_options(replace(GPTQOptions(), profile=profile, **PROFILES[profile]), options, "GPTQ")
    if not 0 <= opts.damp < 1 or opts.block_size < 1 or opts.calib_batch_size < 1:
        raise ConfigError("GPTQ options out of range: need 0 <= damp < 1, block_size >= 1, calib_batch_size >= 1")
    if "smoothquant" in options:
        check_smoothquant(opts.smoothquant, "GPTQ")
    if opts.quant_grid not in GRIDS:
        raise ConfigError(f"unknown GPTQ quant_grid '{opts.quant_grid}'; known: {', '.join(GRIDS)}")
    return opts


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


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """TF32 off for the duration (Hessians and GPTQ updates on CUDA must be real fp32); restored after."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


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
    fmt = spec.number_format(opts.quant_grid)
    res = gptq_quantize(stacked, H, spec.bits, spec.group_size, spec.sym, damp=opts.damp,
                        block_size=opts.block_size, act_order=opts.act_order, static_groups=opts.static_groups,
                        damp_step=opts.damp_step, damp_max=opts.damp_max, name=", ".join(names), own_h=True,
                        own_w=len(names) > 1,  # the stacked copy is ours; a lone layer's weight is the parameter
                        grid=opts.quant_grid, fmt=fmt, tensor_scale=layer_tensor_scales(fmt, weights),
                        generator=fmt.generator(", ".join(names)))
    del H
    seconds = time.perf_counter() - t0
    row = 0
    for name, w in zip(names, weights):
        rows = w.shape[0]
        q = res.weight[row: row + rows]
        d = q - w.float()
        recon = float(((d @ S) * d).sum(dtype=torch.float64)) / N  # fp32 products: no float64 copy of S
        w.copy_(q.to(w.dtype))
        info[name] = {"recon_loss": recon, "damp": res.damp, "gptq_loss": float(res.row_loss[row: row + rows].sum()),
                      "seconds": seconds * rows / stacked.shape[0],
                      "grid": LayerGrid(res.scale[row: row + rows].clone(), res.zero[row: row + rows].clone(),
                                        res.g_idx.clone(), spec.bits, spec.group_size, spec.sym, opts.quant_grid,
                                        None if fmt.is_int else fmt,
                                        None if res.tensor_scale is None else res.tensor_scale[row:row + 1].reshape(1))}
        row += rows


def layer_tensor_scales(fmt: NumberFormat, weights: list[torch.Tensor]) -> torch.Tensor | None:
    """Two-level formats: each stacked layer's own tensor scale, one per row ([Σ out, 1]), so stacking
    the linears that share a Hessian leaves every layer's numbers as if it were quantized alone."""
    scales = [fmt.tensor_scale(w) for w in weights]
    if scales[0] is None:
        return None
    return torch.cat([ts.float().expand(w.shape[0]).reshape(-1, 1) for ts, w in zip(scales, weights)])


@register_quantizer
class GPTQ(Quantizer):
    name = "gptq"
    needs_calibration = True
    records_grid = True
    streamable = True
    activation_quant = True
    options_type = GPTQOptions

    def parse_options(self, options: dict[str, Any]) -> GPTQOptions:
        return gptq_options(options)

    def calibration_flow(self, options: dict[str, Any]) -> Flow:
        """Sequential: block i is calibrated on the outputs of the quantized blocks < i; otherwise every
        Hessian comes from one pass of the FP model."""
        return "quantized" if gptq_options(options).sequential else "fp"

    def stream_problem(self, options: dict[str, Any]) -> str | None:
        if not gptq_options(options).sequential:
            return ("streamed GPTQ is block-sequential; drop sequential=false (its whole-model FP Hessians need the "
                    "whole model)")
        return None

    def quantize_block(self, job: BlockJob, spec: QuantSpec) -> BlockDone:
        """One block from its calibration inputs (the quantized earlier blocks' outputs). The next block's
        inputs go to ``job.outputs`` from the staged pass that finishes the block (its kept activations make
        that pass little more than the last linear), so the pipeline need not run the block again."""
        info: dict[str, dict[str, Any]] = {}
        with ieee_fp32():
            gptq_block(job.module, job.linears, job.inputs, spec, gptq_options(dict(spec.options)), info,
                       propagate=job.outputs or False)
        return BlockDone(info, sent_outputs=job.outputs is not None)

    def implied(self, options: dict[str, Any]) -> dict[str, Any]:
        """The grid when a profile (not the options) picks a non-reference one: the llmcompressor profile
        used the reference grid before, so its records need a key of their own."""
        grid = gptq_options(options).quant_grid
        return {"quant_grid": grid} if grid != "reference" and "quant_grid" not in options else {}

    @torch.no_grad()
    def quantize_layers(self, model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec,
                        calibration: torch.Tensor | None) -> dict[str, dict[str, float]]:
        with ieee_fp32():
            return self._quantize(model, layers, spec, calibration)

    def _quantize(self, model, layers, spec, calibration) -> dict[str, dict[str, float]]:
        opts = gptq_options(dict(spec.options))
        tokens = tokens_of(calibration)
        assert tokens is not None
        batches = calibration_batches(model, tokens, opts.calib_batch_size)
        info: dict[str, dict[str, float]] = {}
        blocks = decoder_layers(model) if opts.sequential else None
        in_blocks, rest = split_by_block(model, blocks, layers)
        sequential = blocks is not None and any(in_blocks.values())
        if sequential:
            self._sequential(model, blocks, in_blocks, batches, spec, opts, info, calibration)
        if rest:
            # FP Hessians (nothing quantized before this pass) are the same for every variant
            key = ("gptq-whole-model", tuple(rest), opts.calib_batch_size) if not sequential else None
            self._whole_model(model, rest, batches, spec, opts, info, calibration if key else None, key)
        return info

    def _whole_model(self, model, linears, batches, spec, opts, info, calibration=None, key=None) -> None:
        """One pass of the (FP or partly quantized) model gives every Hessian at once."""
        def collect() -> tuple[list[list[str]], _Hessians]:
            groups = _input_groups(model, linears, lambda: model(input_ids=batches[0], use_cache=False))
            hessians = _Hessians(groups)
            handles = [linears[g[0]].register_forward_pre_hook(lambda m, a, add=hessians.adder(g[0]): add(a[0]))
                       for g in groups]
            try:
                with calibrating():
                    for b in batches:
                        model(input_ids=b, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            return groups, hessians
        groups, hessians = memoised(calibration, key, collect) if key else collect()
        for g in groups:
            _quantize_group(g, linears, hessians, spec, opts, info)

    def _sequential(self, model, blocks, in_blocks, batches, spec, opts, info, calibration=None) -> None:
        """Block by block; each block's inputs are the previous (quantized) block's outputs."""
        with calibrating():
            inputs = first_block_inputs(model, blocks[0], batches)
        last = max(bi for bi, lin in in_blocks.items() if lin)
        for bi in range(last + 1):
            inputs = gptq_block(blocks[bi], in_blocks.get(bi, {}), inputs, spec, opts, info,
                                    calibration if bi == 0 else None, propagate=bi < last)


def gptq_block(block: nn.Module, linears: dict[str, nn.Linear], inputs: BlockInputs, spec: QuantSpec,
               opts: GPTQOptions, info: dict[str, dict[str, float]], first_of: Any = None,
               propagate: bool | Callable[[int, Any], None] = True) -> list[tuple[tuple, dict]] | None:
    """GPTQ on one decoder block, in place, from its calibration inputs (the previous quantized block's
    outputs); returns the next block's inputs when ``propagate`` is True, or hands each batch's output to
    ``propagate(batch, output)`` as it is computed (layer streaming: no list of them is held). Shared by the
    in-memory sequential path and layer streaming. ``first_of``: the calibration of the whole model when
    this is block 0, whose first Hessians see only FP weights and are shared by every variant."""
    args0, kwargs0 = first_sample(*inputs[0])
    probe = probe_block(block, linears, lambda: block(*args0, **kwargs0)) if linears else None
    staged = StagedBlock(block, inputs, linears, probe or BlockProbe(groups=[]), replay=opts.replay)
    groups = probe.groups if probe else []
    steps = [[g] for g in groups] if opts.true_sequential else ([groups] if groups else [])
    for si, step in enumerate(steps):
        def collect(step=step) -> _Hessians:
            hessians = _Hessians(groups)
            with calibrating():
                staged.run({g[0]: hessians.adder(g[0]) for g in step}, stop_at=step[-1][0])
            return hessians
        if first_of is not None and si == 0:
            key = ("gptq-block0-step0", tuple(map(tuple, step)), opts.calib_batch_size)
            hessians = memoised(first_of, key, collect)
        else:
            hessians = collect()
        for g in step:
            _quantize_group(g, linears, hessians, spec, opts, info)
            staged.mark_quantized(g)
    nxt = None
    with calibrating():
        if callable(propagate):
            staged.run({}, stop_at=None, sink=propagate)
        elif propagate:
            nxt = next_inputs(staged.run({}, stop_at=None), inputs)
    staged.release()
    return nxt
