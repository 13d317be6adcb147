"""The quantizer grid, checked against values computed by hand from the reference GPTQ formulas."""
from __future__ import annotations

import pytest
import torch

from qrobust.quant.formats.grid import fake_quantize, find_params, group_bounds, quantize_dequantize


def _fq(row, bits, sym):
    w = torch.tensor([row], dtype=torch.float32)
    scale, zero = find_params(w, bits, sym)
    return quantize_dequantize(w, scale, zero, bits)[0].tolist(), scale.item(), zero.item()


def test_asymmetric_3bit_by_hand():
    # xmin=-1, xmax=2 -> scale=3/7, zero=round(7/3)=2
    # q(-1)=round(-7/3)+2=0, q(0)=2, q(.5)=round(7/6)+2=3, q(2)=round(14/3)+2=7
    vals, scale, zero = _fq([-1.0, 0.0, 0.5, 2.0], 3, sym=False)
    assert scale == pytest.approx(3 / 7)
    assert zero == 2
    assert vals == pytest.approx([-6 / 7, 0.0, 3 / 7, 15 / 7], abs=1e-6)


def test_symmetric_4bit_by_hand():
    # xmax = max(|-.9|, 1) = 1, xmin = -1 -> scale = 2/15, zero = 16/2 = 8
    # q(-.9) = round(-6.75)+8 = 1; q(.25) = round(1.875)+8 = 10; q(1) = clamp(round(7.5)+8, 0, 15) = 15
    vals, scale, zero = _fq([-0.9, 0.25, 1.0], 4, sym=True)
    assert scale == pytest.approx(2 / 15)
    assert zero == 8
    assert vals == pytest.approx([-14 / 15, 4 / 15, 14 / 15], abs=1e-6)


def test_symmetric_all_positive_row_keeps_reference_quirk():
    # reference: xmin stays 0 when no value is negative -> scale = 1/7, zero = 4
    # q(.2) = round(1.4)+4 = 5 -> 1/7;  q(1) = min(round(7)+4, 7) = 7 -> 3/7 (clipped to half the range)
    vals, scale, zero = _fq([0.2, 1.0], 3, sym=True)
    assert scale == pytest.approx(1 / 7)
    assert zero == 4
    assert vals == pytest.approx([1 / 7, 3 / 7], abs=1e-6)


def test_all_zero_row_is_exact():
    vals, scale, zero = _fq([0.0, 0.0, 0.0], 2, sym=False)
    assert vals == [0.0, 0.0, 0.0]
    assert scale == pytest.approx(2 / 3)  # xmin=-1, xmax=1 -> 2/(2^2-1)


@pytest.mark.parametrize("n,g,expected", [
    (300, 128, [(0, 128), (128, 256), (256, 300)]),
    (256, 128, [(0, 128), (128, 256)]),
    (300, -1, [(0, 300)]),
    (100, 100, [(0, 100)]),
])
def test_group_bounds(n, g, expected):
    assert group_bounds(n, g) == expected


@pytest.mark.parametrize("bad", [0, -2, 11])
def test_group_bounds_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        group_bounds(10, bad)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError):
        find_params(torch.ones(1, 2), bits, True)


@pytest.mark.parametrize("bits,sym", [(2, False), (3, True), (4, False), (8, True)])
def test_fake_quantize_matches_per_group_loop(bits, sym):
    torch.manual_seed(bits)
    w = torch.randn(5, 70)
    out = fake_quantize(w, bits, 32, sym)
    # independent slow reference: every (row, group) on its own, formulas written out one by one
    # (float32 like the reference implementation, so round-half ties fall the same way)
    maxq = 2 ** bits - 1
    for r in range(5):
        for a in (0, 32, 64):
            x = w[r, a: min(a + 32, 70)]
            xmin, xmax = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
            if sym:
                xmax = max(abs(xmin), xmax)
                if xmin < 0:
                    xmin = -xmax
            scale = torch.tensor((xmax - xmin) / maxq, dtype=torch.float32)
            zero = (maxq + 1) / 2 if sym else torch.round(-torch.tensor(xmin) / scale).item()
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            ref = scale * (q - zero)
            assert torch.allclose(out[r, a: a + 32], ref, atol=1e-6)
    # at most 2^b distinct levels per group
    for a in (0, 32, 64):
        for r in range(5):
            assert len(set(out[r, a: a + 32].tolist())) <= 2 ** bits


def test_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    errs = [(fake_quantize(w, b, 128, False) - w).norm().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 0.01 * w.norm().item()
