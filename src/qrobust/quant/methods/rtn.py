"""Round-to-nearest (RTN): each weight group rounded on the shared grid; no calibration data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..formats.number_format import FormatScaleError, NonFiniteWeightError
from ..formats.grid import GroupSizeError, fake_quantize_format
from ...errors import ConfigError
from ..base import Quantizer, typed_options
from ..registry import QuantSpec, register_quantizer


@dataclass(frozen=True)
class RTNOptions:
    smoothquant: float = 0.0  # SmoothQuant's α for W8A8 (pipelines/smoothquant.py); 0: off


def check_smoothquant(alpha: float, method: str) -> None:
    """α must be in (0, 1] when given (0 would be a second spelling of "off", with a key of its own)."""
    if not 0 < alpha <= 1:
        raise ConfigError(f"{method} option smoothquant must be α in (0, 1] (0.5 is the paper's); leave it out for none")


@register_quantizer
class RTN(Quantizer):
    name = "rtn"
    needs_calibration = False
    records_grid = True
    streamable = True  # per layer, no data: the default quantize_block (this method on each block) holds
    activation_quant = True
    options_type = RTNOptions

    def parse_options(self, options: dict[str, Any]) -> RTNOptions:
        opts = typed_options(RTNOptions(), options, "RTN")
        if "smoothquant" in options:
            check_smoothquant(opts.smoothquant, "RTN")
        return opts

    @torch.no_grad()
    def quantize_layers(self, model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec,
                        calibration: torch.Tensor | None) -> dict[str, dict[str, float]]:
        info: dict[str, dict] = {}
        fmt = spec.number_format()
        for name, lin in layers.items():
            try:
                w, grid = fake_quantize_format(lin.weight, fmt, fmt.generator(name))
            except (GroupSizeError, NonFiniteWeightError, FormatScaleError) as e:
                raise type(e)(f"RTN: layer '{name}': {e}") from None
            lin.weight.copy_(w)
            info[name] = {"grid": grid}
        return info
