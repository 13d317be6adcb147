"""Every float format against the reference of its owners, bit for bit (tests/format_oracles.py: torchao's
MX cast for MXFP*, compressed-tensors for NVFP4 and FP8 channel, torch's / torchao's element casts for the
rest, and the OCP MX rule by hand); bad input refused with one line naming the layer; stochastic rounding.
bench/check_formats_oracle.py runs the same comparison on >= 10^7 values per format."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qrobust.errors import QrobustError
from qrobust.quant.formats.elements import ELEMENTS, round_float
from qrobust.quant.formats.grid import fake_quantize_format
from qrobust.quant.formats.number_format import FormatScaleError, NonFiniteWeightError
from qrobust.quant.formats.presets import FORMATS, parse_format
from qrobust.quant.registry import QuantSpec, get_quantizer

pytest.importorskip("torchao", reason="the MX / fp6 / fp4 oracles are torchao's (pip install 'qrobust[test]')")
pytest.importorskip("compressed_tensors", reason="the NVFP4 / FP8 oracle is compressed-tensors'")
import format_oracles as fo  # noqa: E402  (after the skips: it imports the oracles lazily, but says what is missing)

FLOAT_PRESETS = sorted(n for n, f in FORMATS.items() if not f.is_int and f.block_size not in (0, -2))
GENERAL = ["fp4-e2m1-g32-fp16", "fp8-e4m3-g128", "fp6-e3m2-g32-e8m0", "fp8-e5m2-g64-fp16", "fp6-e2m3-channel"]
MAGNITUDES = [1e-30, 1e-5, 0.02, 1.0, 300.0]  # fp32 tiny (scales far below 1) … large (FP16 scales still fit)
COLS = 256


def _tensors(fmt) -> list[torch.Tensor]:
    """Random weights at several magnitudes, the adversarial rows, and bf16 / fp16 copies."""
    ts = [fo.random_weights(8, COLS, m, seed) for seed, m in enumerate(MAGNITUDES)]
    ts.append(fo.adversarial(fmt.element, fmt.block_size, COLS))
    ts += [ts[2].bfloat16(), ts[3].bfloat16(), ts[2].half(), ts[-1].bfloat16()]
    return ts


def _assert_same(ours: torch.Tensor, ref: torch.Tensor, w: torch.Tensor, keeps_neg_zero: bool) -> None:
    """Equal values, and equal sign bits (compressed-tensors turns an input −0.0 into +0.0; torch and
    torchao keep it: there the bit patterns must be identical)."""
    assert ours.dtype == ref.dtype
    assert torch.equal(ours, ref), f"{int((ours != ref).sum())} of {ours.numel()} values differ"
    signs = torch.signbit(ours) == torch.signbit(ref)
    if not keeps_neg_zero:
        signs |= (w == 0) & torch.signbit(w)
    assert bool(signs.all()), "a zero's sign differs"


@pytest.mark.parametrize("name", FLOAT_PRESETS + GENERAL)
def test_format_equals_its_owners_oracle(name):
    fmt = parse_format(name)
    for w in _tensors(fmt):
        ref = fo.oracle(w, fmt.element, fmt.block_size, fmt.scale)
        ours, grid = fake_quantize_format(w, fmt)
        _assert_same(ours, ref["values"], w, keeps_neg_zero=fmt.scale not in ("e4m3",) and name != "fp8-e4m3-channel")
        if "e8m0" in ref:  # the stored power of two: the E8M0 biased exponent, and the scale it stands for
            assert torch.equal(((grid.scale.view(torch.int32) >> 23) & 0xFF).to(torch.uint8), ref["e8m0"])
            assert torch.equal(grid.scale, torch.exp2(ref["e8m0"].double() - 127).float())
        else:
            assert torch.equal(grid.scale, ref["scale"])
        if "global" in ref:
            assert torch.equal(grid.tensor_scale, ref["global"])


@pytest.mark.parametrize("elem", ["e4m3", "e5m2"])
def test_fp8_channel_equals_torch_native(elem):
    """FP8 per channel against torch alone: scale amax/max per row, saturating clamp, torch's cast."""
    fmt = FORMATS[f"fp8-{elem}-channel"]
    for w in [fo.random_weights(16, 384, 3.0, 7), fo.adversarial(elem, -1, 384)]:
        ref, scale = fo.scaled_cast(w, elem, -1)
        ours, grid = fake_quantize_format(w, fmt)
        _assert_same(ours, ref, w, keeps_neg_zero=True)
        assert torch.equal(grid.scale, scale)


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6-e2m3", "mxfp6-e3m2", "mxfp8-e4m3", "mxfp8-e5m2"])
def test_mx_equals_the_ocp_rule_by_hand(name):
    """The OCP MX v1.0 rule in Python floats, block by block: shared exponent floor(log2 amax) − emax_elem
    (clamped to E8M0's [−127, 127]), elements rounded nearest-even on the element's value table. Includes
    blocks below 2^-124 whose scale is E8M0's smallest, 2^-127 (an fp32 subnormal): the spec and qrobust
    divide and multiply by 2^-127, while torchao divides by 2^-126 (its min-normal clamp) and multiplies
    by 2^-127, so torchao's own round trip halves such blocks. No weight is that small in practice."""
    fmt = FORMATS[name]
    e = fmt.element
    w = torch.cat([fo.adversarial(e, 32, 64, seed=3), fo.random_weights(4, 64, 0.05, 1),
                   torch.tensor([[3e-39, 1e-39, -2.2e-39, 5e-40] * 16]),  # E8M0 floor: X = 2^-127
                   torch.tensor([[2.0 ** 120] + [1.0] * 63])])  # the largest exponents
    ours, grid = fake_quantize_format(w, fmt)
    for r in range(w.shape[0]):
        for b in range(2):
            vals, biased = fo.mx_by_hand(w[r, 32 * b: 32 * b + 32].tolist(), e)
            assert ours[r, 32 * b: 32 * b + 32].tolist() == vals, (r, b)
            assert grid.scale[r, b].item() == 2.0 ** (biased - 127)


@pytest.mark.parametrize("elem", ["e4m3", "e5m2", "e2m3", "e3m2", "e2m1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_float_equals_the_value_table(elem, dtype):
    """Every midpoint (a tie), its neighbours one ulp away, and random values across the whole range,
    in fp32 and fp64 (GPTQ's float64 reference path), against nearest-even on the enumerated table."""
    table = fo.element_table(elem)
    ties = fo.element_ties(elem).to(dtype)
    near = torch.cat([torch.nextafter(ties, ties * 2), torch.nextafter(ties, ties * 0)])
    rand = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=dtype) * table[-1] / 2
    x = torch.cat([ties, near, rand, torch.tensor([0.0, -0.0, table[-1] * 1.5, -1e30], dtype=dtype)])
    got = round_float(x, ELEMENTS[elem])
    want = [fo.round_by_table(v, table) for v in x.tolist()]
    assert got.dtype == dtype and got.tolist() == want
    assert torch.equal(torch.signbit(got), torch.signbit(torch.tensor(want, dtype=dtype)))


def test_nvfp4_against_torchao_elements_and_scales_agree_values_within_two_ulp():
    """torchao's NVFP4 gives the same E2M1 elements and E4M3 block scales; its dequantized values differ in
    the last bits by design: it multiplies by (amax/2688)·s where compressed-tensors (and we) divide s by
    the global scale 2688/amax (counted at scale by bench/check_formats_oracle.py)."""
    fmt = FORMATS["nvfp4"]
    for seed in range(3):
        w = fo.random_weights(32, 512, 0.02, seed)
        ours, grid = fake_quantize_format(w, fmt)
        ref, scale, elems = fo.nvfp4_torchao(w)
        assert torch.equal(grid.scale, scale)
        assert torch.equal(fmt.codes(w, grid.scale[:, grid.g_idx], grid.zero[:, grid.g_idx], grid.tensor_scale), elems)
        ulps = (ours.view(torch.int32) - ref.view(torch.int32)).abs()
        assert int(ulps.max()) <= 2


# ------------------------------------------------------------------------------------------- bad input
def _one_layer(weight: torch.Tensor) -> tuple[nn.Module, dict[str, nn.Linear]]:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return nn.Sequential(lin), {"blocks.0.mlp.up": lin}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "fp8-e4m3-channel", "int4-g128"])
def test_non_finite_weights_refused_with_the_layer(bad, name):
    w = torch.randn(8, 256)
    w[3, 17] = bad
    with pytest.raises(NonFiniteWeightError, match=r"non-finite values \(") as e:
        fake_quantize_format(w, parse_format(name))
    assert "\n" not in str(e.value)
    model, layers = _one_layer(w)
    with pytest.raises(NonFiniteWeightError, match=r"^RTN: layer 'blocks.0.mlp.up': the weight has non-finite"):
        get_quantizer("rtn").quantize_layers(model, layers, QuantSpec("rtn", format=name), None)
    from qrobust.quant.methods.gptq_core import gptq_quantize
    fmt = parse_format(name)
    with pytest.raises(QrobustError, match=r"^GPTQ: layer 'blocks.0.mlp.up': the weight has non-finite"):
        gptq_quantize(w, torch.eye(256), fmt.bits, fmt.block_size, name="blocks.0.mlp.up", fmt=fmt)


def test_fp16_scale_overflow_refused_with_the_layer():
    """FP16 block scales: the reference rounds amax/max to half; a block with amax/max > 65504 cannot."""
    fmt = parse_format("fp4-e2m1-g32-fp16")
    ok = fo.random_weights(4, 64, 1e4, 0)  # amax/6 < 65504: fits, and equals the reference
    ref, scale = fo.scaled_cast(ok, "e2m1", 32, "fp16")
    ours, grid = fake_quantize_format(ok, fmt)
    assert torch.equal(ours, ref) and torch.equal(grid.scale, scale)
    w = ok.clone()
    w[2, 40] = 65504 * 6 * 1.01
    with pytest.raises(FormatScaleError, match="fp16 block scale overflows"):
        fake_quantize_format(w, fmt)
    model, layers = _one_layer(w)
    with pytest.raises(FormatScaleError, match=r"^RTN: layer 'blocks.0.mlp.up': an fp16 block scale overflows"):
        get_quantizer("rtn").quantize_layers(model, layers, QuantSpec("rtn", format="fp4-e2m1-g32-fp16"), None)


# ---------------------------------------------------------------------------------- stochastic rounding
def test_stochastic_rounding_is_seeded_unbiased_and_picks_a_neighbour():
    """mxfp4 with -sr on a block pinned to amax 6 (E8M0 scale exactly 1, so elements = values): each of
    4000 rows is an independent draw of the same 32 values."""
    fmt = parse_format("fp4-e2m1-g32-e8m0-sr")
    x = torch.tensor([6.0, 0.1, 0.3, -0.7, 1.1, 1.6, -2.2, 2.9, 3.3, -4.5, 5.5, 0.25, -0.75, 1.25, 4.0, -0.0]
                     + [float(v) for v in torch.linspace(-5.9, 5.9, 16)])
    n = 4000
    w = x.repeat(n, 1)
    a, _ = fake_quantize_format(w, fmt, fmt.generator("blocks.0.attn.q"))
    b, _ = fake_quantize_format(w, fmt, fmt.generator("blocks.0.attn.q"))
    c, _ = fake_quantize_format(w, fmt, fmt.generator("blocks.0.attn.k"))
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded by the layer name: reproducible, per layer
    assert torch.equal(fake_quantize_format(w, fmt)[0], fake_quantize_format(w, FORMATS["mxfp4"])[0])
    table = fo.element_table("e2m1")
    for j, v in enumerate(x.tolist()):
        lo = math.copysign(max(t for t in table if t <= abs(v)), v)
        hi = math.copysign(min(t for t in table if t >= abs(v)), v)
        draws = a[:, j].double()
        assert set(draws.unique().tolist()) <= {lo, hi}, v
        p = (v - lo) / (hi - lo) if hi != lo else 0.0  # P(hi)
        sd = abs(hi - lo) * math.sqrt(p * (1 - p) / n)
        assert abs(float(draws.mean()) - v) <= 5 * sd + 1e-12, (v, float(draws.mean()), sd)
        if 0.05 < p < 0.95:
            assert lo in draws.tolist() and hi in draws.tolist()
