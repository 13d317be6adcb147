"""Quantizer grids: the reference GPTQ implementation's (IST-DASLab ``quant.py``, the default, shared by all
methods) and compressed-tensors' (what llm-compressor writes and vLLM / transformers load).

For a group of weights ``x`` (one row of one column group):
    xmin = min(min(x), 0), xmax = max(max(x), 0)
    symmetric: xmax = max(|xmin|, xmax); xmin = -xmax where xmin < 0
    xmin == xmax == 0  ->  xmin, xmax = -1, +1
    scale = (xmax - xmin) / (2^b - 1)
    zero  = round(-xmin / scale)            (symmetric: (2^b - 1 + 1) / 2 = 2^(b-1))
    q     = clamp(round(w / scale) + zero, 0, 2^b - 1);   w_hat = scale * (q - zero)
Note the reference's symmetric quirk, kept on purpose: a row with no negative value keeps xmin = 0, so
its scale spans [0, xmax] while the zero point sits mid-grid (values above ~xmax/2 clip).

``grid="compressed-tensors"`` (``calculate_qparams`` and ``fake_quantize`` of compressed-tensors, int type):
    xmin = min(min(x), 0), xmax = max(max(x), 0); signed codes -2^(b-1) … 2^(b-1) - 1
    symmetric: scale = max(|xmin|, xmax) / ((2^b - 1) / 2), zero point 0 — no quirk: 2·absmax/(2^b - 1)
    asymmetric: scale = (xmax - xmin) / (2^b - 1), zero point = round(clamp(-2^(b-1) - xmin/scale, range))
    scale == 0 (an all-zero group)  ->  scale = eps of the compute dtype (zero point 0)
    q = round(clamp(w / scale + zp, range)) (round half to even);   w_hat = scale * (q - zp)
Codes are stored here unsigned (q + 2^(b-1), zero = zp + 2^(b-1)); the dequantized values are the same.

Groups run along the input dimension (columns). ``group_size = -1`` gives one group per output channel;
a group size larger than in_features is refused (almost always a mistake; use -1). When in_features is
not a multiple of group_size, the last group holds the remaining ``in_features % group_size`` columns
(the reference GPTQ's column loop does the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import bits_problem, group_size_problem
from ...errors import QrobustError


class GroupSizeError(QrobustError, ValueError):
    """A group size that does not fit a layer's input width."""


def _compute(x: torch.Tensor) -> torch.Tensor:
    """fp32 math for half/bf16 inputs; float64 stays float64 (reference checks)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def maxq_for(bits: int) -> int:
    if bits_problem(bits):
        raise ValueError(bits_problem(bits))
    return 2 ** bits - 1


GRIDS = ("reference", "compressed-tensors")


def check_grid(grid: str) -> None:
    if grid not in GRIDS:
        raise ValueError(f"unknown quantization grid '{grid}'; known: {', '.join(GRIDS)}")


def _ct_params(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors' ``calculate_qparams`` (int, no global or dtype-rounded scale), zero unsigned."""
    maxq, half = maxq_for(bits), 2 ** (bits - 1)
    zeros = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xmin = torch.minimum(x.min(dim=1).values, zeros)
    xmax = torch.maximum(x.max(dim=1).values, zeros)
    if sym:
        scale = torch.maximum(xmin.abs(), xmax.abs()) / (maxq / 2)
        zp = zeros
    else:
        scale = (xmax - xmin) / maxq
        zp = torch.round(torch.clamp(-half - xmin / scale, -half, half - 1))
        zp = torch.where(scale == 0, zeros, zp)  # theirs: 0/0 cast to int8 gives 0
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(x.dtype).eps), scale)
    return scale.unsqueeze(1), (zp + half).unsqueeze(1)


def find_params(x: torch.Tensor, bits: int, sym: bool, grid: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) for a 2-D tensor ``x`` of shape [rows, cols]; both shaped [rows, 1]."""
    if grid != "reference":
        check_grid(grid)
        return _ct_params(_compute(x), bits, sym)
    maxq = maxq_for(bits)
    x = _compute(x)
    zeros = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xmin = torch.minimum(x.min(dim=1).values, zeros)
    xmax = torch.maximum(x.max(dim=1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        neg = xmin < 0
        xmin = torch.where(neg, -xmax, xmin)
    dead = (xmin == 0) & (xmax == 0)
    xmin = torch.where(dead, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(dead, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize_dequantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                        grid: str = "reference") -> torch.Tensor:
    if grid != "reference":
        check_grid(grid)
        half = 2 ** (bits - 1)
        zp = zero - half  # compressed-tensors: the zero point is added before clamping and rounding
        q = torch.round(torch.clamp(_compute(w) / scale + zp, -half, half - 1))
        return scale * (q - zp)
    maxq = maxq_for(bits)
    q = torch.clamp(torch.round(_compute(w) / scale) + zero, 0, maxq)
    return scale * (q - zero)


def group_bounds(in_features: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges of the groups: size ``group_size``, the last one holding the remainder."""
    if group_size_problem(group_size):
        raise ValueError(group_size_problem(group_size))
    if group_size > in_features:
        raise GroupSizeError(f"group size {group_size} is larger than in_features={in_features}; "
                             "use -1 (per output channel) or a smaller group size")
    g = in_features if group_size == -1 else group_size
    return [(i, min(i + g, in_features)) for i in range(0, in_features, g)]


@dataclass
class LayerGrid:
    """The grid a quantizer put one linear on: ``scale`` and ``zero`` per (output row, group), and each
    input column's group (``g_idx``). Dequantized weight = scale · (q − zero), q in [0, 2^bits − 1].
    Kept so a quantized model can be exported as integers plus scales (``quant/export.py``)."""
    scale: torch.Tensor  # [out, n_groups]
    zero: torch.Tensor  # [out, n_groups]
    g_idx: torch.Tensor  # [in]
    bits: int
    group_size: int
    sym: bool
    grid: str = "reference"

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes of the dequantized weight ``w`` on this grid ([out, in], int32)."""
        s, z = self.scale[:, self.g_idx], self.zero[:, self.g_idx]
        if self.grid != "reference":
            half = 2 ** (self.bits - 1)
            return (torch.round(torch.clamp(_compute(w) / s + (z - half), -half, half - 1)) + half).to(torch.int32)
        return torch.clamp(torch.round(_compute(w) / s) + z, 0, maxq_for(self.bits)).to(torch.int32)


def fake_quantize_grid(w: torch.Tensor, bits: int, group_size: int, sym: bool,
                       grid: str = "reference") -> tuple[torch.Tensor, LayerGrid]:
    """Round-to-nearest quantize + dequantize a [out, in] weight with per-group parameters (fp32 math),
    and the grid it used."""
    out = torch.empty_like(w, dtype=torch.float32)
    scales, zeros, g_idx = [], [], torch.empty(w.shape[1], dtype=torch.long)
    for k, (a, b) in enumerate(group_bounds(w.shape[1], group_size)):
        chunk = w[:, a:b].float()
        scale, zero = find_params(chunk, bits, sym, grid)
        out[:, a:b] = quantize_dequantize(chunk, scale, zero, bits, grid)
        scales.append(scale)
        zeros.append(zero)
        g_idx[a:b] = k
    return out.to(w.dtype), LayerGrid(torch.cat(scales, 1), torch.cat(zeros, 1), g_idx, bits, group_size, sym, grid)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool, grid: str = "reference") -> torch.Tensor:
    """Round-to-nearest quantize + dequantize a [out, in] weight with per-group parameters (fp32 math)."""
    return fake_quantize_grid(w, bits, group_size, sym, grid)[0]
