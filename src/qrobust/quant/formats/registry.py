"""Number formats by name: each quantizer grid is one class registered with ``@register_grid(name)``,
saying how a group's parameters are found (``params``), how weights are rounded onto it (``qdq``) and
which integer codes they take (``codes``). Adding a format is one new module plus one registration;
``grid.py`` is what methods call, with the format's name."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

from ...config import bits_problem
from ...errors import ConfigError


def compute(x: torch.Tensor) -> torch.Tensor:
    """fp32 math for half/bf16 inputs; float64 stays float64 (reference checks)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def maxq_for(bits: int) -> int:
    if bits_problem(bits):
        raise ValueError(bits_problem(bits))
    return 2 ** bits - 1


class Grid:
    """One integer format. ``scale`` and ``zero`` are per row (shape [rows, 1], or expanded per column
    for ``codes``); codes are stored unsigned, 0 … 2^bits − 1, and dequantize to scale · (q − zero)."""

    name: str = ""

    def params(self, x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row (scale, zero) of a 2-D group ``x`` [rows, cols]; both shaped [rows, 1]."""
        raise NotImplementedError

    def qdq(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
        """``w`` rounded onto the grid and dequantized."""
        raise NotImplementedError

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
        """The integer codes (int32) of a weight ``w`` that lies on the grid."""
        raise NotImplementedError


class UnknownGridError(ConfigError, ValueError):
    """A grid name that no module registered."""


GRIDS: dict[str, Grid] = {}

G = TypeVar("G", bound=type[Grid])


def register_grid(name: str) -> Callable[[G], G]:
    """Class decorator: make the grid available as ``quant_grid=<name>``."""
    def deco(cls: G) -> G:
        cls.name = name
        GRIDS[name] = cls()
        return cls
    return deco


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise UnknownGridError(f"unknown quantization grid '{name}'; known: {', '.join(GRIDS)}")
    return GRIDS[name]
