"""AWQ's settings: the options and profiles (``autoawq``, ``llmcompressor``), the grid each profile
rounds on, and the order in which the scale search tries its candidates (see ``awq.py``)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ...errors import ConfigError
from ..base import typed_options
from ..formats.grid import fake_quantize, fake_quantize_format, group_bounds
from ..registry import QuantSpec

GRIDS = ("autoawq", "compressed-tensors")


@dataclass(frozen=True)
class AWQOptions:
    profile: str = "autoawq"
    quant_grid: str = "autoawq"  # autoawq | compressed-tensors
    duo_scaling: bool = True
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_tokens: int = 512
    calib_batch_size: int = 8
    mapping: str = "auto"  # auto (known architectures, else generic) | generic


PROFILES: dict[str, dict[str, Any]] = {
    "autoawq": dict(quant_grid="autoawq", clip=True),
    "llmcompressor": dict(quant_grid="compressed-tensors", clip=False),
}


def awq_options(options: dict[str, Any]) -> AWQOptions:
    """Profile defaults, then explicit options on top; unknown keys, types or values are one clear line."""
    profile = options.get("profile", AWQOptions.profile)
    if profile not in PROFILES:
        raise ConfigError(f"unknown AWQ profile '{profile}'; known: {', '.join(PROFILES)}")
    opts = typed_options(replace(AWQOptions(), profile=profile, **PROFILES[profile]), options, "AWQ")
    if opts.quant_grid not in GRIDS:
        raise ConfigError(f"AWQ option quant_grid must be one of {', '.join(GRIDS)}, got '{opts.quant_grid}'")
    if opts.profile == "llmcompressor" and opts.n_grid < (3 if opts.duo_scaling else 2):
        raise ConfigError("AWQ profile llmcompressor needs n_grid >= 3 with duo scaling (>= 2 without): "
                          "its ratios are j/(n_grid-2) (j/(n_grid-1))")
    if opts.mapping not in ("auto", "generic"):
        raise ConfigError(f"AWQ option mapping must be 'auto' or 'generic', got '{opts.mapping}'")
    if opts.n_grid < 1 or opts.clip_grid < 1 or not 0 <= opts.max_shrink < 1 or opts.clip_tokens < 1 \
            or opts.calib_batch_size < 1:
        raise ConfigError("AWQ options out of range: need n_grid, clip_grid, clip_tokens, calib_batch_size >= 1 "
                          "and 0 <= max_shrink < 1")
    return opts


def awq_fake_quantize(w: torch.Tensor, bits: int, group_size: int, zero_point: bool) -> torch.Tensor:
    """AutoAWQ's ``pseudo_quantize_tensor`` per group along the input dimension (fp32 math)."""
    out = torch.empty_like(w, dtype=torch.float32)
    for a, b in group_bounds(w.shape[1], group_size):
        x = w[:, a:b].float()
        if zero_point:
            hi, lo = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
            qmax = 2 ** bits - 1
            scale = (hi - lo).clamp(min=1e-5) / qmax
            zero = (-torch.round(lo / scale)).clamp(0, qmax)
            out[:, a:b] = (torch.clamp(torch.round(x / scale) + zero, 0, qmax) - zero) * scale
        else:
            qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
            scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / qmax
            out[:, a:b] = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    return out.to(w.dtype)


def grid_quantize(w: torch.Tensor, spec: QuantSpec, opts: AWQOptions, group_size: int | None = None,
                  tensor_scale: torch.Tensor | None = None) -> torch.Tensor:
    """RTN on the profile's grid: AutoAWQ's (zero point when asymmetric) or compressed-tensors'; a float
    format (``spec.format``: nvfp4, mxfp4, fp8 …) on its own blocks and scales, as llm-compressor's AWQ
    quantizes it. ``group_size=-1``: ``w`` is one group's columns (the clip search), rounded as one block
    with the whole weight's ``tensor_scale`` (two-level formats)."""
    g = spec.group_size if group_size is None else group_size
    if spec.format:
        fmt = spec.number_format()
        if group_size is None:
            return fake_quantize_format(w, fmt)[0]
        scale, zero = fmt.params(w.float(), tensor_scale)
        return fmt.qdq(w.float(), scale, zero, tensor_scale).to(w.dtype)
    if opts.quant_grid == "autoawq":
        return awq_fake_quantize(w, spec.bits, g, not spec.sym)
    return fake_quantize(w, spec.bits, g, spec.sym, "compressed-tensors")


def candidates(opts: AWQOptions) -> list[tuple[float, bool]]:
    """(ratio, duo scaling) in search order; the first of equal losses wins."""
    n = opts.n_grid
    if opts.profile == "autoawq":
        return [(i / n, opts.duo_scaling) for i in range(n)]
    if opts.duo_scaling:  # llm-compressor: "no scaling" first, then a grid that includes ratio 1
        return [(0.0, False)] + [(j / (n - 2), True) for j in range(n - 1)]
    return [(j / (n - 1), False) for j in range(n)]
