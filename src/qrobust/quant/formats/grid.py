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
from .registry import GRIDS, get_grid, maxq_for

__all__ = ["GRIDS", "GroupSizeError", "LayerGrid", "fake_quantize", "fake_quantize_grid", "find_params",
           "group_bounds", "maxq_for", "quantize_dequantize"]


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
        return get_grid(self.grid).codes(w, self.scale[:, self.g_idx], self.zero[:, self.g_idx], self.bits)


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
