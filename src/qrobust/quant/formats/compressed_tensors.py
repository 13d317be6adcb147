"""compressed-tensors' grid (``calculate_qparams`` and ``fake_quantize`` of compressed-tensors, int
type): what llm-compressor writes and vLLM / transformers load.

    xmin = min(min(x), 0), xmax = max(max(x), 0); signed codes -2^(b-1) … 2^(b-1) - 1
    symmetric: scale = max(|xmin|, xmax) / ((2^b - 1) / 2), zero point 0 — no quirk: 2·absmax/(2^b - 1)
    asymmetric: scale = (xmax - xmin) / (2^b - 1), zero point = round(clamp(-2^(b-1) - xmin/scale, range))
    scale == 0 (an all-zero group)  ->  scale = eps of the compute dtype (zero point 0)
    q = round(clamp(w / scale + zp, range)) (round half to even);   w_hat = scale * (q - zp)
Codes are stored here unsigned (q + 2^(b-1), zero = zp + 2^(b-1)); the dequantized values are the same.
"""
from __future__ import annotations

import torch

from .registry import Grid, compute, maxq_for, register_grid


@register_grid("compressed-tensors")
class CompressedTensors(Grid):
    def params(self, x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``calculate_qparams`` (int, no global or dtype-rounded scale), zero unsigned."""
        x = compute(x)
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

    def qdq(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
        half = 2 ** (bits - 1)
        zp = zero - half  # the zero point is added before clamping and rounding
        q = torch.round(torch.clamp(compute(w) / scale + zp, -half, half - 1))
        return scale * (q - zp)

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
        half = 2 ** (bits - 1)
        return (torch.round(torch.clamp(compute(w) / scale + (zero - half), -half, half - 1)) + half).to(torch.int32)
