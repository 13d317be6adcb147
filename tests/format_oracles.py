"""The owners' reference implementations of each float format, and the tensors to try them on: shared by
tests/test_formats_oracle.py (fast, a few tensors) and bench/check_formats_oracle.py (at scale).

Every oracle returns ``(values, scales)``: the dequantized weight and the stored block scales as the owner
keeps them (E8M0 biased exponents as uint8, E4M3 block scales as float32, fp32/fp16 scales as float32),
plus, for NVFP4, the global (tensor) scale. None of them calls qrobust.

    MX (OCP):  torchao ``to_mx(x, elem, 32, ScaleCalculationMode.FLOOR)`` + ``to_dtype``, and by hand:
               shared exponent floor(log2 amax) - emax_elem, elements on an enumerated value table
    NVFP4:     compressed-tensors ``generate_gparam``, ``calculate_qparams`` (tensor_group, g16, E4M3
               scales), ``fake_quantize`` (what export writes); torchao ``nvfp4_quantize`` for comparison
    FP8 chan.: compressed-tensors float channel args (E4M3 only); torch-native amax/max scale + cast
    other:     amax/max scales in fp32 (or rounded to fp16), elements cast by torch (FP8) or torchao (FP6/FP4)
"""
from __future__ import annotations

import logging
import math

import torch

F32_MIN_NORMAL = torch.finfo(torch.float32).tiny
FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
LAYOUT = {"e4m3": (4, 3), "e5m2": (5, 2), "e2m3": (2, 3), "e3m2": (3, 2), "e2m1": (2, 1)}


def _quiet_torchao() -> None:
    logging.getLogger("torchao").setLevel(logging.ERROR)


def _torchao_elem(elem: str):
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    return {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "e2m3": DTYPE_FP6_E2M3,
            "e3m2": DTYPE_FP6_E3M2, "e2m1": torch.float4_e2m1fn_x2}[elem]


def _hp(w: torch.Tensor) -> torch.Tensor:
    """What the libraries accept: bf16 and fp32 as they are, fp16 (which they refuse) as fp32."""
    return w.float() if w.dtype == torch.float16 else w


# --------------------------------------------------------------------------------------------- casts
def owner_cast(x: torch.Tensor, elem: str) -> torch.Tensor:
    """``x`` (fp32, already within ±max) rounded onto ``elem`` by its owner: torch's float8 casts, torchao's
    fp6/fp4 bit-level casts."""
    if elem in FP8:
        return x.to(FP8[elem]).float()
    _quiet_torchao()
    from torchao.prototype.mx_formats import kernels as k
    to, back = {"e2m1": (k.f32_to_f4_unpacked, k.f4_unpacked_to_f32),
                "e2m3": (k.f32_to_f6_e2m3_unpacked, k.f6_e2m3_unpacked_to_f32),
                "e3m2": (k.f32_to_f6_e3m2_unpacked, k.f6_e3m2_unpacked_to_f32)}[elem]
    return back(to(x.contiguous()))


def element_table(elem: str) -> list[float]:
    """Every finite non-negative value of ``elem``, in code order (so an even index = an even mantissa LSB),
    from the bit layout alone (OCP: E4M3 has no infinities and one NaN code; E5M2 is IEEE-like)."""
    ebits, mbits = LAYOUT[elem]
    bias = 2 ** (ebits - 1) - 1
    vals = []
    for e in range(2 ** ebits):
        for m in range(2 ** mbits):
            if elem == "e4m3" and e == 15 and m == 7 or elem == "e5m2" and e == 31:
                continue  # NaN / inf codes
            vals.append(m / 2 ** mbits * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2 ** mbits) * 2.0 ** (e - bias))
    return vals


def round_by_table(x: float, table: list[float]) -> float:
    """Nearest value of the table (ties: the even code), saturating at the max; sign kept."""
    a = abs(x)
    if a >= table[-1]:
        return math.copysign(table[-1], x)
    hi = next(i for i, v in enumerate(table) if v >= a)
    lo = max(hi - 1, 0)
    d_lo, d_hi = a - table[lo], table[hi] - a
    i = lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else hi
    return math.copysign(table[i], x)


# ----------------------------------------------------------------------------------------------- MX
def mx_torchao(w: torch.Tensor, elem: str, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's MX cast (FLOOR: the OCP rule) and back: (values in w's dtype, E8M0 biased exponents)."""
    _quiet_torchao()
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    x = _hp(w).contiguous()
    e = _torchao_elem(elem)
    scale, data = to_mx(x, e, block, ScaleCalculationMode.FLOOR)
    out = to_dtype(data, scale, e, block, x.dtype)
    return out.to(w.dtype), scale.view(torch.uint8).reshape(w.shape[0], -1)


def mx_by_hand(block: list[float], elem: str) -> tuple[list[float], int]:
    """One block by the OCP MX v1.0 rule (section 6.3), in Python floats: X = 2^(floor(log2 amax) - emax_elem),
    clamped to E8M0's range [2^-127, 2^127]; elements = round(V / X) on the element table."""
    table = element_table(elem)
    emax_elem = math.frexp(table[-1])[1] - 1
    amax = max(abs(v) for v in block)
    e = -127 if amax == 0 else max(min(math.frexp(amax)[1] - 1 - emax_elem, 127), -127)
    x = 2.0 ** e
    return [round_by_table(v / x, table) * x for v in block], e + 127


# --------------------------------------------------------------------------------------------- NVFP4
def nvfp4_compressed_tensors(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """compressed-tensors' NVFP4 weight quantization (llm-compressor's observer min/max): (values,
    E4M3 block scales as float32 [out, in/16], global scale [1])."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
    args = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", symmetric=True, group_size=16,
                            scale_dtype=torch.float8_e4m3fn)
    x = w.float()
    gs = generate_gparam(x.amin(), x.amax())
    g = x.unflatten(1, (-1, 16))
    scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args, global_scale=gs)
    return fake_quantize(x, scale, zp, args, global_scale=gs).to(w.dtype), scale.float(), gs


def nvfp4_torchao(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchao's NVFP4 with a per-tensor scale amax/(448·6), dequantized as its NVFP4Tensor does:
    (values, E4M3 block scales as float32, the E2M1 element values [out, in])."""
    _quiet_torchao()
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize
    x = _hp(w).contiguous()
    pts = x.float().abs().amax() / (448.0 * 6.0)
    scale, packed = nvfp4_quantize(x, 16, per_tensor_scale=pts)
    elems = f4_unpacked_to_f32(unpack_uint4(packed)).reshape(w.shape[0], -1, 16)
    out = elems * (pts * scale.float()).reshape(w.shape[0], -1, 1)
    return out.reshape(w.shape).to(w.dtype), scale.float(), elems.reshape(w.shape)


# ------------------------------------------------------------------------------------ scaled casts
def fp8_channel_compressed_tensors(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors' FP8 (E4M3) per-channel weight quantization: (values, fp32 scales [out, 1])."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams
    args = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
    x = w.float()
    scale, zp = calculate_qparams(x.amin(1, keepdim=True), x.amax(1, keepdim=True), args)
    return fake_quantize(x, scale, zp, args).to(w.dtype), scale


def scaled_cast(w: torch.Tensor, elem: str, block: int, scale: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """The plain rule: per block (or per row, ``block`` -1) scale = amax / elem max in fp32 (``scale`` "fp16":
    rounded to half; an all-zero block gets the scale dtype's eps), elements cast by their owner after a
    saturating clamp, dequantized in fp32. Returns (values, scales [out, n_blocks])."""
    x = w.float()
    rows, cols = x.shape
    b = cols if block == -1 else block
    g = x.reshape(rows, cols // b, b)
    emax = element_table(elem)[-1]
    s = g.abs().amax(-1, keepdim=True) / emax
    eps = torch.finfo(torch.float16 if scale == "fp16" else torch.float32).eps
    if scale == "fp16":
        s = s.half().float()
    s = torch.where(s == 0, torch.full_like(s, eps), s)
    q = owner_cast(torch.clamp(g / s, -emax, emax), elem)
    return (q * s).reshape(rows, cols).to(w.dtype), s.reshape(rows, -1)


# ------------------------------------------------------------------------------------------- tensors
def element_ties(elem: str) -> torch.Tensor:
    """The midpoints between adjacent element values (both signs): the values a rounding must tie-break."""
    t = torch.tensor(element_table(elem), dtype=torch.float64)
    mid = ((t[1:] + t[:-1]) / 2).float()
    return torch.cat([mid, -mid])


def adversarial(elem: str, block: int, cols: int, seed: int = 0) -> torch.Tensor:
    """[rows, cols] fp32 rows that break careless quantizers, block by block (block -1: one block per row):
    all zero, a single nonzero, ±0, exact ties times a power of two (the block's max fixed so the scale is
    that power), values at and just beyond the element max, huge beside tiny, subnormal elements."""
    gen = torch.Generator().manual_seed(seed)
    b = cols if block == -1 else block
    table = element_table(elem)
    emax = table[-1]
    ties = element_ties(elem)
    rows = []
    for k in range(-6, 7, 3):  # a power-of-two scale 2^k (MX: amax = emax · 2^k gives X = 2^(k + frac))
        p = 2.0 ** k
        r = ties[torch.randint(len(ties), (cols,), generator=gen)] * p
        r.view(-1, b)[:, 0] = emax * p  # pins amax: the scale is exactly representable
        rows.append(r)
    rows.append(torch.zeros(cols))
    rows.append(torch.zeros(cols).masked_fill(torch.arange(cols) % 2 == 1, -0.0))
    single = torch.zeros(cols)
    single[torch.randint(cols, (1,), generator=gen)] = -3.75
    rows.append(single)
    at_max = torch.full((cols,), emax) * torch.where(torch.arange(cols) % 2 == 0, 1.0, -1.0)
    rows.append(at_max)
    beyond = at_max.clone()
    beyond.view(-1, b)[:, 1::2] = torch.nextafter(beyond.view(-1, b)[:, 1::2].abs(),
                                                  torch.tensor(math.inf)) * beyond.view(-1, b)[:, 1::2].sign()
    rows.append(beyond)
    mixed = torch.randn(cols, generator=gen) * 1e-6
    mixed.view(-1, b)[:, 0] = 1e4
    rows.append(mixed)
    sub = torch.randn(cols, generator=gen) * (table[1] * 4)  # most elements subnormal once scaled
    sub.view(-1, b)[:, 0] = emax
    rows.append(sub)
    return torch.stack(rows)


def random_weights(rows: int, cols: int, magnitude: float, seed: int) -> torch.Tensor:
    """Gaussian weights times ``magnitude``, with a heavy tail (a few values 10-100× the rest)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    tail = torch.rand(rows, cols, generator=gen) < 0.01
    w = torch.where(tail, w * torch.exp(torch.rand(rows, cols, generator=gen) * 4.6), w)
    return w * magnitude


def oracle(w: torch.Tensor, element: str, block: int, scale: str) -> dict[str, torch.Tensor]:
    """The owner's answer for one format (by its fields): {"values", and "e8m0" | "scale" | "global"}."""
    if scale == "e8m0":
        v, e = mx_torchao(w, element, block)
        return {"values": v, "e8m0": e}
    if scale == "e4m3":
        assert (element, block) == ("e2m1", 16), "two-level E4M3 scales: NVFP4 only"
        v, s, gs = nvfp4_compressed_tensors(w)
        return {"values": v, "scale": s, "global": gs}
    if scale == "fp32" and element == "e4m3" and block == -1:
        v, s = fp8_channel_compressed_tensors(w)
        return {"values": v, "scale": s}
    v, s = scaled_cast(w, element, block, scale)
    return {"values": v, "scale": s}
