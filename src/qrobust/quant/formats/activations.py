"""Activation and KV-cache quantization as pure tensor math: fake-quantize a linear's input or the keys
and values an attention layer stores, on a ``NumberFormat`` whose block says where the scale comes from.

    token  (-1)  dynamic: one scale per row of the last dimension, from that row's amax — per token for a
                 linear input [.., features]; per token and head for keys/values [b, heads, seq, head_dim]
    tensor (0)   static: one scale for the whole tensor, from a calibrated (min, max)
    head   (-2)  static, KV cache only: one scale per attention head (dim 1 of [b, heads, seq, head_dim],
                 the KV heads under grouped-query attention), from calibrated per-head (min, max)

Static scales are computed from the observed range exactly as a dynamic one is from its row: the range
enters ``NumberFormat.params`` as a two-value row [min, max]. So every element type, sym or asym, goes
through the one path the weights use, and no caller branches on a format.

Integer elements use compressed-tensors' grid (``compressed_tensors.py``: the grid W8A8 checkpoints are
written on and vLLM runs): symmetric int8 scale = amax / 127.5, codes −128 … 127, q = round(clamp(x/s)).
Float elements (FP8 E4M3 …): scale = amax / element max (448), x/s rounded to nearest-even, saturating.
Both equal compressed-tensors' ``compute_dynamic_scales_and_zp`` + ``fake_quantize`` (token strategy)
and ``calculate_qparams`` + ``fake_quantize`` (tensor, attention-head strategies) bit for bit
(``tests/test_act_quant.py``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ...errors import ConfigError
from .number_format import NumberFormat
from .presets import parse_format

ACT_GRID = "compressed-tensors"
ROLES = {"act": (-1, 0), "kv": (-1, 0, -2)}  # the blocks each role takes


def act_format(name: str, role: str = "act") -> NumberFormat:
    """The format of an activation (``role="act"``) or KV-cache (``"kv"``) name; integers on the
    activation grid. One clear line for a block the role cannot take."""
    fmt = parse_format(name)
    if fmt.block_size not in ROLES[role]:
        allowed = "token or tensor" if role == "act" else "token, tensor or head"
        raise ConfigError(f"{role} format '{name}': activations of this role take {allowed} scales "
                          "(e.g. int8-token, fp8-e4m3-tensor, fp8-e4m3-head for the KV cache)")
    if fmt.stochastic:
        raise ConfigError(f"{role} format '{name}': stochastic rounding (-sr) is for weights; activations are "
                          "rounded to nearest-even as the hardware casts them: drop -sr")
    return replace(fmt, grid=ACT_GRID) if fmt.is_int else fmt


def is_static(fmt: NumberFormat) -> bool:
    """Whether the format's scale is calibrated (tensor, head) rather than computed per token."""
    return fmt.block_size in (0, -2)


def _rows_tensor(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, -1)


def _rows_head(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).reshape(x.shape[1], -1)


_ROWS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {0: _rows_tensor, -2: _rows_head}


def observe(x: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """The (min, max) a static format calibrates on, of one tensor: [1, 2] per tensor, [heads, 2] per
    head (``x`` [b, heads, seq, head_dim]). fp32, for ``merge``."""
    rows = _ROWS[fmt.block_size](x.detach())
    return torch.stack([rows.amin(dim=1), rows.amax(dim=1)], dim=1).float()


def merge(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """Two observed ranges as one: the smallest min and the largest max."""
    if a is None:
        return b
    return torch.stack([torch.minimum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])], dim=1)


def static_params(fmt: NumberFormat, rng: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per tensor or head ([k, 1]) from the calibrated range [k, 2]: the range taken as a
    block of two values, so the scale rule is the format's own."""
    return fmt.params(rng)


def _dynamic(x: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    scale, zero = fmt.params(rows)
    return fmt.qdq(rows, scale, zero).reshape(x.shape)


def _per_tensor(x: torch.Tensor, fmt: NumberFormat, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, zero = params
    return fmt.qdq(x.reshape(1, -1), scale, zero).reshape(x.shape)


def _per_head(x: torch.Tensor, fmt: NumberFormat, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, zero = params
    heads = x.shape[1]
    if scale.shape[0] != heads:
        raise ConfigError(f"{fmt.label}: calibrated for {scale.shape[0]} heads, got a tensor with {heads}")
    rows = _rows_head(x)
    return fmt.qdq(rows, scale, zero).reshape(heads, x.shape[0], *x.shape[2:]).transpose(0, 1)


def fake_quantize_act(x: torch.Tensor, fmt: NumberFormat,
                      params: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x`` quantized and dequantized on ``fmt`` (fp32 math, returned in ``x``'s dtype): per token from
    its own amax, or with the static ``params`` (``static_params`` of the calibrated range)."""
    if fmt.block_size == -1:
        out = _dynamic(x, fmt)
    elif params is None:
        raise ConfigError(f"{fmt.label} is a static (calibrated) format: it needs calibration data")
    else:
        out = (_per_tensor if fmt.block_size == 0 else _per_head)(x, fmt, params)
    return out.to(x.dtype)
