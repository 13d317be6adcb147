"""Round-to-nearest (RTN): each weight group rounded on the shared grid; no calibration data."""
from __future__ import annotations

import zlib

import torch
from torch import nn

from ..formats.number_format import FormatScaleError, NumberFormat
from ..formats.grid import GroupSizeError, fake_quantize_format
from ..base import Quantizer
from ..registry import QuantSpec, register_quantizer


def rounding_generator(fmt: NumberFormat, layer: str) -> torch.Generator | None:
    """Stochastic rounding's random stream for one layer: seeded by the layer name, so the same variant
    gives the same numbers on every run."""
    if not fmt.stochastic:
        return None
    return torch.Generator().manual_seed(zlib.crc32(layer.encode()))


@register_quantizer
class RTN(Quantizer):
    name = "rtn"
    needs_calibration = False
    records_grid = True
    streamable = True  # per layer, no data: the default quantize_block (this method on each block) holds

    @torch.no_grad()
    def quantize_layers(self, model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec,
                        calibration: torch.Tensor | None) -> dict[str, dict[str, float]]:
        info: dict[str, dict] = {}
        fmt = spec.number_format()
        for name, lin in layers.items():
            try:
                w, grid = fake_quantize_format(lin.weight, fmt, rounding_generator(fmt, name))
            except (GroupSizeError, FormatScaleError) as e:
                raise type(e)(f"RTN: layer '{name}': {e}") from None
            lin.weight.copy_(w)
            info[name] = {"grid": grid}
        return info
