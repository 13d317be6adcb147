"""A number format as data: element type × block size × scale type (× the integer grid, for integers).

    element   int2…int8 (sym or asym, on an integer grid of ``registry.py``), e4m3, e5m2, e2m3, e3m2, e2m1
    block     values sharing one scale along the input dimension: g<N>, one per output channel ("channel",
              -1) or one per tensor ("tensor", 0)
    scale     fp32 (amax / element max); fp16 (the same, rounded to half: overflow is refused);
              e8m0 (a power of two, OCP MX: 2^(floor(log2 amax) − emax_elem), torchao's FLOOR rule);
              e4m3 (NVFP4: E4M3 block scales times an fp32 tensor scale, compressed-tensors' rules)

Everything a method asks of a format goes through ``NumberFormat``: ``tensor_scale`` (once per weight),
``params`` (per block: the stored scale and zero), ``qdq`` (values rounded onto the format) and ``codes``.
Integer formats delegate to the integer grids unchanged, so every integer number stays what it was.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ...errors import ConfigError, QrobustError
from .elements import ELEMENTS, ElementType, round_float, round_float_
from .registry import get_grid

SCALES = ("fp32", "fp16", "e8m0", "e4m3")
E4M3 = torch.float8_e4m3fn
F32_MIN_NORMAL = torch.finfo(torch.float32).tiny


class FormatScaleError(QrobustError, ValueError):
    """A block scale the scale type cannot hold (e.g. an FP16 scale that overflows)."""


class NonFiniteWeightError(QrobustError, ValueError):
    """A weight with NaN or infinite values: no format can round them (the owners' casts give NaN or a
    saturated value, silently)."""


def nonfinite_problem(w: torch.Tensor) -> str | None:
    """One line if ``w`` holds NaN or ±inf (how many of how many), else None. The test is one reduction
    (min and max propagate NaN and reach ±inf): ~2% of an int4 RTN pass."""
    if w.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(w.detach()))).all()):
        return None
    bad = ~torch.isfinite(w)
    n_nan = int(torch.isnan(w).sum())
    return (f"the weight has non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} inf of {w.numel()}); "
            "a number format cannot round them: check the checkpoint (or the step that produced it)")


@dataclass(frozen=True)
class NumberFormat:
    """One weight (or activation) format. ``block_size``: -1 per output channel (per token, for
    activations), 0 per tensor, else the group length along the input dimension. ``grid``: the integer
    grid (integer elements only). ``stochastic``: stochastic instead of nearest-even rounding."""

    element: str
    block_size: int = 128
    scale: str = "fp32"
    sym: bool = True
    grid: str = "reference"
    stochastic: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        ELEMENTS.lookup(self.element)
        if self.scale not in SCALES:
            raise ConfigError(f"unknown scale type '{self.scale}'; known: {', '.join(SCALES)}")
        if not self.elem.is_float and self.stochastic:
            raise ConfigError(f"stochastic rounding (-sr) is for float elements; {self.element} rounds on its integer "
                              "grid: drop -sr")
        if not self.elem.is_float and self.scale != "fp32":
            raise ConfigError(f"integer elements take fp32 scales (the integer grids'), not {self.scale}")
        if self.elem.is_float and not self.sym:
            raise ConfigError(f"{self.element} is a float element: it is symmetric (drop asym)")
        if not isinstance(self.block_size, int) or self.block_size < -2:
            raise ConfigError(f"block size must be -1 (per channel / token), 0 (per tensor), -2 (per attention head) "
                              f"or positive, got {self.block_size!r}")

    def generator(self, layer: str) -> torch.Generator | None:
        """Stochastic rounding's random stream for one layer (None for nearest rounding): seeded by the layer
        name, so a variant gives the same numbers in memory, streamed and on every re-run."""
        if not self.stochastic:
            return None
        return torch.Generator().manual_seed(zlib.crc32(layer.encode()))

    @property
    def elem(self) -> ElementType:
        return ELEMENTS[self.element]

    @property
    def bits(self) -> int:
        return self.elem.bits

    @property
    def is_int(self) -> bool:
        return not self.elem.is_float

    @property
    def exact_blocks(self) -> bool:
        """Block formats with shared scales need the block to divide the width (integer groups may end
        in a shorter last group, as the reference GPTQ does)."""
        return self.elem.is_float and self.block_size > 0

    def problem(self, in_features: int) -> str | None:
        """Why this format cannot quantize a linear of width ``in_features`` (one line), or None."""
        if self.block_size in (0, -2):
            return f"{self.label} is an activation / KV-cache format (per tensor or head), not a weight format"
        if self.block_size > in_features:
            return (f"group size {self.block_size} is larger than in_features={in_features}; "
                    "use -1 (per output channel) or a smaller group size")
        if self.exact_blocks and in_features % self.block_size:
            return (f"block size {self.block_size} of {self.label} does not divide in_features={in_features}; "
                    "pick a format whose block divides the layer, or exclude it")
        return None

    @property
    def label(self) -> str:
        return self.name or format_name(self)

    def tensor_scale(self, w: torch.Tensor) -> torch.Tensor | None:
        """The fp32 tensor-level scale of two-level formats (NVFP4: 448·6 / amax(W), compressed-tensors'
        ``generate_gparam``), None for the others."""
        if self.scale != "e4m3":
            return None
        lo, hi = torch.aminmax(w.detach())  # one pass, no |w| copy: amax = max(−min, max)
        amax = torch.clamp(torch.maximum(-lo, hi).float(), min=F32_MIN_NORMAL)
        gs = torch.finfo(E4M3).max * self.elem.max / amax
        return torch.nan_to_num(gs, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)

    def params(self, x: torch.Tensor, tensor_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored (scale, zero) of each row of a block ``x`` [rows, cols], both [rows, 1]. For e4m3
        scales the stored scale is the E4M3 value; ``qdq`` divides it by the tensor scale."""
        if self.is_int:
            return get_grid(self.grid).params(x, self.bits, self.sym)
        amax = (x if x.dtype in (torch.float32, torch.float64) else x.float()).abs().amax(dim=1, keepdim=True)
        return self._float_scale(amax.float(), tensor_scale), torch.zeros_like(amax)

    def _float_scale(self, amax: torch.Tensor, tensor_scale: torch.Tensor | None) -> torch.Tensor:
        emax = self.elem.max
        if self.scale == "e8m0":
            field = (amax.view(torch.int32) >> 23) & 0xFF  # floor(log2 amax) + 127 (0 for amax = 0)
            e = torch.clamp(field - 127 - self.elem.emax_pow2, -127, 127)
            return torch.ldexp(torch.ones_like(amax), e)  # E8M0's smallest, 2^-127, is an fp32 subnormal: exact
        if self.scale == "e4m3":
            raw = (tensor_scale if tensor_scale is not None else 1.0) * (amax / emax)
            fin = torch.finfo(E4M3)
            s = torch.clamp(raw, fin.min, fin.max).to(E4M3).float()
            return torch.where(s == 0, torch.full_like(s, fin.eps), s)
        s = amax / emax
        if self.scale == "fp16":
            h = s.half()
            if torch.isinf(h).any():
                raise FormatScaleError(f"an fp16 block scale overflows (amax {float(amax.max()):.4g} / {emax:g} > 65504); "
                                       "use fp32 scales or a format with a larger element range")
            s = h.float()
            return torch.where(s == 0, torch.full_like(s, torch.finfo(torch.float16).eps), s)
        return torch.where(s == 0, torch.full_like(s, torch.finfo(s.dtype).eps), s)

    def effective(self, scale: torch.Tensor, tensor_scale: torch.Tensor | None) -> torch.Tensor:
        """The scale the elements are multiplied by (the stored scale over the tensor scale, if any)."""
        return scale / tensor_scale if tensor_scale is not None else scale

    def qdq(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, tensor_scale: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """``w`` rounded onto the format with the given block parameters, dequantized (fp32 math)."""
        if self.is_int:
            return get_grid(self.grid).qdq(w, scale, zero, self.bits)
        eff = self.effective(scale, tensor_scale)
        return self.elements(w, eff, generator).mul_(eff)

    def elements(self, w: torch.Tensor, eff: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The element values (floats on the element grid) of ``w`` at effective scale ``eff``."""
        x = w if w.dtype in (torch.float32, torch.float64) else w.float()
        y = (x / eff).clamp_(-self.elem.max, self.elem.max)
        if self.stochastic and generator is not None:
            return round_float(y, self.elem, generator)
        return round_float_(y, self.elem)

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
              tensor_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Integer formats: the unsigned integer codes (int32); float formats: the element values (fp32)."""
        if self.is_int:
            return get_grid(self.grid).codes(w, scale, zero, self.bits)
        return self.elements(w, self.effective(scale, tensor_scale))


def format_name(f: NumberFormat) -> str:
    """The canonical spelling ``<element>-<block>-<scale>`` (``parse_format`` reads it back)."""
    elem = f.element if f.is_int else f"fp{f.bits}-{f.element}"
    block = {-1: "channel", 0: "tensor", -2: "head"}.get(f.block_size, f"g{f.block_size}")
    tail = "" if f.is_int or f.scale == "fp32" else f"-{f.scale}"
    return f"{elem}-{block}{tail}{'' if f.sym else '-asym'}{'-sr' if f.stochastic else ''}"
