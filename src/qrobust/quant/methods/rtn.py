"""Round-to-nearest (RTN): each weight group rounded on the shared grid; no calibration data."""
from __future__ import annotations

import torch
from torch import nn

from ..formats.grid import GroupSizeError, fake_quantize_grid
from ..base import Quantizer
from ..registry import QuantSpec, register_quantizer


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
        for name, lin in layers.items():
            try:
                w, grid = fake_quantize_grid(lin.weight, spec.bits, spec.group_size, spec.sym)
            except GroupSizeError as e:
                raise GroupSizeError(f"RTN: layer '{name}': {e}") from None
            lin.weight.copy_(w)
            info[name] = {"grid": grid}
        return info
