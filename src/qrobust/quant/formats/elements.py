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


def round_float(x: torch.Tensor, elem: ElementType, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (fp32 or fp64, finite) rounded onto ``elem``'s values: nearest, ties to even, saturating at
    ±max. With a ``generator``: stochastic rounding (up with probability equal to the distance from the
    lower neighbour, in units of the local quantum), reproducible from the generator's seed.

    The quantum of a value is 2^(max(floor(log2|x|), emin) − mbits); dividing by a power of two is exact,
    so ``torch.round`` (half to even) on x/quantum rounds exactly like the hardware cast."""
    a = x.abs()
    exp = torch.frexp(a)[1] - 1  # floor(log2 |x|) for every nonzero x, exactly
    exp = torch.clamp(exp, min=elem.emin) - elem.mbits
    scaled = torch.ldexp(a, -exp)
    if generator is None:
        r = torch.round(scaled)
    else:
        r = torch.floor(scaled + torch.rand(scaled.shape, generator=generator, dtype=scaled.dtype,
                                            device=scaled.device))
    return torch.copysign(torch.clamp(torch.ldexp(r, exp), max=elem.max), x)
