"""The integer quantizer grids every method rounds on, by format name (``registry.py``): the reference
GPTQ implementation's (``reference.py``, the default, shared by all methods) and compressed-tensors'
(``compressed_tensors.py``: what llm-compressor writes and vLLM / transformers load); per-group
rounding of whole weights, and the grid a layer was put on (``LayerGrid``, for export).

Groups run along the input dimension (columns). ``group_size = -1`` gives one group per output channel;
a group size larger than in_features is refused (almost always a mistake; use -1). When in_features is
not a multiple of group_size, the last group holds the remaining ``in_features % group_size`` columns
(the reference GPTQ's column loop does the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import group_size_problem
from ...errors import QrobustError
from . import reference  # noqa: F401  (registers "reference", the default: first in the known list)
from . import compressed_tensors  # noqa: F401  (registers "compressed-tensors")
from .number_format import NonFiniteWeightError, NumberFormat, nonfinite_problem
from .registry import GRIDS, get_grid, maxq_for

__all__ = ["GRIDS", "GroupSizeError", "LayerGrid", "fake_quantize", "fake_quantize_format", "fake_quantize_grid",
           "find_params", "group_bounds", "int_format", "maxq_for", "quantize_dequantize"]


class GroupSizeError(QrobustError, ValueError):
    """A group size that does not fit a layer's input width."""


def find_params(x: torch.Tensor, bits: int, sym: bool, grid: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) for a 2-D tensor ``x`` of shape [rows, cols]; both shaped [rows, 1]."""
    return get_grid(grid).params(x, bits, sym)


def quantize_dequantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                        grid: str = "reference") -> torch.Tensor:
    return get_grid(grid).qdq(w, scale, zero, bits)


def group_bounds(in_features: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges of the groups: size ``group_size``, the last one holding the remainder."""
    if group_size_problem(group_size):
        raise ValueError(group_size_problem(group_size))
    if group_size > in_features:
        raise GroupSizeError(f"group size {group_size} is larger than in_features={in_features}; "
                             "use -1 (per output channel) or a smaller group size")
    g = in_features if group_size == -1 else group_size
    return [(i, min(i + g, in_features)) for i in range(0, in_features, g)]


def int_format(bits: int, group_size: int, sym: bool, grid: str = "reference") -> NumberFormat:
    """The integer format of a plain (bits, group size, sym) variant on one of the integer grids."""
    return NumberFormat(f"int{bits}", group_size, "fp32", sym, grid)


@dataclass
class LayerGrid:
    """The grid a quantizer put one linear on: ``scale`` and ``zero`` per (output row, group), and each
    input column's group (``g_idx``). Integers: dequantized weight = scale · (q − zero), q in
    [0, 2^bits − 1]; float formats: ``format``'s element values times scale / ``tensor_scale``. Kept so a
    quantized model can be exported as codes plus scales (``quant/export.py``)."""
    scale: torch.Tensor  # [out, n_groups]
    zero: torch.Tensor  # [out, n_groups]
    g_idx: torch.Tensor  # [in]
    bits: int
    group_size: int
    sym: bool
    grid: str = "reference"
    format: NumberFormat | None = None  # None: the integer format of (bits, group_size, sym, grid)
    tensor_scale: torch.Tensor | None = None  # two-level formats (NVFP4)

    @property
    def number_format(self) -> NumberFormat:
        return self.format or int_format(self.bits, self.group_size, self.sym, self.grid)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The codes of the dequantized weight ``w`` on this grid ([out, in]): int32 integer codes, or
        the float elements' values."""
        return self.number_format.codes(w, self.scale[:, self.g_idx], self.zero[:, self.g_idx], self.tensor_scale)


def fake_quantize_format(w: torch.Tensor, fmt: NumberFormat, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, LayerGrid]:
    """Round-to-nearest quantize + dequantize a [out, in] weight onto ``fmt`` (fp32 math), and the grid
    it used; NaN / inf in ``w`` are refused (``NonFiniteWeightError``). Whole blocks are done at once (a
    [out·n_blocks, block] view); only an integer layout with a shorter last group loops over groups."""
    problem = fmt.problem(w.shape[1])
    if problem:
        raise GroupSizeError(problem)
    problem = nonfinite_problem(w)
    if problem:
        raise NonFiniteWeightError(problem)
    rows, cols = w.shape
    bounds = group_bounds(cols, fmt.block_size)
    ts = fmt.tensor_scale(w)
    g_idx = torch.empty(cols, dtype=torch.long)
    for k, (a, b) in enumerate(bounds):
        g_idx[a:b] = k
    g = bounds[0][1]
    if cols % g == 0:
        blocks = w.float().reshape(rows * (cols // g), g)
        scale, zero = fmt.params(blocks, ts)
        out = fmt.qdq(blocks, scale, zero, ts, generator).reshape(rows, cols)
        scale, zero = scale.reshape(rows, -1), zero.reshape(rows, -1)
    else:
        out = torch.empty_like(w, dtype=torch.float32)
        scales, zeros = [], []
        for a, b in bounds:
            chunk = w[:, a:b].float()
            s, z = fmt.params(chunk, ts)
            out[:, a:b] = fmt.qdq(chunk, s, z, ts, generator)
            scales.append(s)
            zeros.append(z)
        scale, zero = torch.cat(scales, 1), torch.cat(zeros, 1)
    grid = LayerGrid(scale, zero, g_idx, fmt.bits, fmt.block_size, fmt.sym, fmt.grid,
                     None if fmt.is_int else fmt, ts)
    return out.to(w.dtype), grid


def fake_quantize_grid(w: torch.Tensor, bits: int, group_size: int, sym: bool,
                       grid: str = "reference") -> tuple[torch.Tensor, LayerGrid]:
    """Round-to-nearest quantize + dequantize a [out, in] weight with per-group parameters (fp32 math),
    and the grid it used."""
    return fake_quantize_format(w, int_format(bits, group_size, sym, grid))


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool, grid: str = "reference") -> torch.Tensor:
    """Round-to-nearest quantize + dequantize a [out, in] weight with per-group parameters (fp32 math)."""
    return fake_quantize_grid(w, bits, group_size, sym, grid)[0]
