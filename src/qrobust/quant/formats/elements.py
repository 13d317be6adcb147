"""Element types: what one quantized value can be. Integers (two's complement codes, on the integer grids
of ``registry.py``) and the small floats of today's hardware, described by their bit layout only:

    FP8 E4M3 (OCP "fn": no infinities, max 448)   FP8 E5M2 (max 57344)
    FP6 E2M3 (max 7.5)   FP6 E3M2 (max 28)        FP4 E2M1 (max 6)

A float element rounds by ``round_float``: round to nearest, ties to even, on the element's grid (normal
and subnormal numbers alike), saturating at ±max (what the OCP MX specification, torchao and
compressed-tensors do when they cast a scaled value). Adding an element type is one entry in ``ELEMENTS``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...registries import Registry


@dataclass(frozen=True)
class ElementType:
    """One element type. ``ebits``/``mbits``: exponent and mantissa bits (0 for integers); ``max``: the
    largest finite magnitude; ``emax_pow2``: floor(log2(max)), which MX scales subtract."""

    name: str
    bits: int
    ebits: int = 0
    mbits: int = 0
    max: float = 0.0

    @property
    def is_float(self) -> bool:
        return self.ebits > 0

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal number (subnormals share its quantum)."""
        return 1 - (2 ** (self.ebits - 1) - 1)

    @property
    def emax_pow2(self) -> int:
        return int(torch.tensor(self.max).frexp()[1]) - 1


ELEMENTS: Registry[ElementType] = Registry("element type")
for _e in (ElementType("e4m3", 8, 4, 3, 448.0), ElementType("e5m2", 8, 5, 2, 57344.0),
           ElementType("e2m3", 6, 2, 3, 7.5), ElementType("e3m2", 6, 3, 2, 28.0), ElementType("e2m1", 4, 2, 1, 6.0),
           *(ElementType(f"int{b}", b) for b in range(2, 9))):
    ELEMENTS[_e.name] = _e


# (int view, exponent-field mask, mantissa bits) of the float dtypes ``round_float`` works in
_BITS = {torch.float32: (torch.int32, 0x7F800000, 23), torch.float64: (torch.int64, 0x7FF0000000000000, 52)}


def round_float(x: torch.Tensor, elem: ElementType, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (fp32 or fp64, finite) rounded onto ``elem``'s values: nearest, ties to even, saturating at
    ±max. With a ``generator``: stochastic rounding (up with probability equal to the distance from the
    lower neighbour, in units of the local quantum), reproducible from the generator's seed."""
    if generator is not None:
        return _round_stochastic(x, elem, generator)
    return round_float_(torch.clamp(x, -elem.max, elem.max), elem)


def round_float_(x: torch.Tensor, elem: ElementType) -> torch.Tensor:
    """``round_float`` in place, nearest-even, for a tensor the caller owns and has clamped to ±max.

    The quantum of a value is q = 2^(max(floor(log2|x|), emin) − mbits). Nearest-even rounding to a
    multiple of q is one float addition: with C = 1.5·2^p·q (p: the dtype's mantissa bits), x + C lies in
    a binade whose spacing is exactly q, so the hardware's round-half-even picks the neighbour (C/q is
    even, so a tie goes to the even element code) and (x + C) − C is exact. C comes from x's exponent
    field by integer ops on the bit view: no frexp/ldexp, which cost ~4× more. Bit-exact with torch's
    float8 casts and torchao's fp6/fp4 casts, the sign of zero included (tests/test_formats_oracle.py)."""
    int_dtype, exp_mask, mant = _BITS[x.dtype]
    bits = x.view(int_dtype)
    sign = torch.bitwise_and(bits, -exp_mask - (1 << mant))  # the sign bit alone (its two's-complement min)
    field = torch.bitwise_and(bits, exp_mask)  # the biased exponent of |x|, left in place in the field
    bias = exp_mask >> (mant + 1)  # 127 or 1023
    field.clamp_(min=(elem.emin + bias) << mant)  # below the element's normal range: the subnormal quantum
    field.add_(((mant - elem.mbits) << mant) + (1 << (mant - 1)))  # × 2^(mant − mbits), mantissa 1.5
    c = field.view(x.dtype)
    x.add_(c).sub_(c)
    bits.bitwise_or_(sign)  # a negative value rounded to zero is −0, as the casts give (nonzero: unchanged)
    return x


def _round_stochastic(x: torch.Tensor, elem: ElementType, generator: torch.Generator) -> torch.Tensor:
    """Stochastic rounding: floor(x/q + U) · q with U uniform on [0, 1) from ``generator`` (|x| in units of
    its quantum q; the sign reapplied), saturating at ±max."""
    a = x.abs()
    exp = torch.frexp(a)[1] - 1  # floor(log2 |x|) for every nonzero x, exactly
    exp = torch.clamp(exp, min=elem.emin) - elem.mbits
    scaled = torch.ldexp(a, -exp)
    r = torch.floor(scaled + torch.rand(scaled.shape, generator=generator, dtype=scaled.dtype, device=scaled.device))
    return torch.copysign(torch.clamp(torch.ldexp(r, exp), max=elem.max), x)
