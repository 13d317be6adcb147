"""The reference GPTQ implementation's grid (IST-DASLab ``quant.py``), the default of every method.

For a group of weights ``x`` (one row of one column group):
    xmin = min(min(x), 0), xmax = max(max(x), 0)
    symmetric: xmax = max(|xmin|, xmax); xmin = -xmax where xmin < 0
    xmin == xmax == 0  ->  xmin, xmax = -1, +1
    scale = (xmax - xmin) / (2^b - 1)
    zero  = round(-xmin / scale)            (symmetric: (2^b - 1 + 1) / 2 = 2^(b-1))
    q     = clamp(round(w / scale) + zero, 0, 2^b - 1);   w_hat = scale * (q - zero)
Note the reference's symmetric quirk, kept on purpose: a row with no negative value keeps xmin = 0, so
its scale spans [0, xmax] while the zero point sits mid-grid (values above ~xmax/2 clip).
"""
from __future__ import annotations

import torch

from .registry import Grid, compute, maxq_for, register_grid


@register_grid("reference")
class Reference(Grid):
    def params(self, x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
        maxq = maxq_for(bits)
        x = compute(x)
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

    def qdq(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
        maxq = maxq_for(bits)
        q = torch.clamp(torch.round(compute(w) / scale) + zero, 0, maxq)
        return scale * (q - zero)

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
        return torch.clamp(torch.round(compute(w) / scale) + zero, 0, maxq_for(bits)).to(torch.int32)
