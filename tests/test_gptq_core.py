"""GPTQ against an independent, slow OBQ-style reference (explicit inverse, column by column, float64)."""
from __future__ import annotations

import itertools

import pytest
import torch

from qrobust.errors import QrobustError
from qrobust.quant.methods.gptq_core import gptq_quantize
from qrobust.quant.formats.grid import fake_quantize


def _params64(x: torch.Tensor, bits: int, sym: bool):
    """The grid formulas written out again, in float64, row by row."""
    maxq = 2 ** bits - 1
    scales, zeros = [], []
    for row in x:
        xmin, xmax = min(row.min().item(), 0.0), max(row.max().item(), 0.0)
        if sym:
            xmax = max(abs(xmin), xmax)
            if xmin < 0:
                xmin = -xmax
        if xmin == 0 and xmax == 0:
            xmin, xmax = -1.0, 1.0
        s = (xmax - xmin) / maxq
        scales.append(s)
        zeros.append((maxq + 1) / 2 if sym else round(-xmin / s))
    return torch.tensor(scales, dtype=torch.float64), torch.tensor(zeros, dtype=torch.float64)


def _q64(w, scale, zero, bits):
    return scale * (torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1) - zero)


def slow_gptq(W, H, bits, group_size, sym, damp, act_order, static_groups):
    """Optimal Brain Quantization, one column at a time: quantize column q, spread its error over the
    remaining columns with the current inverse Hessian, then remove q from that inverse (Gaussian
    elimination). No Cholesky, no lazy blocks: the textbook form of what GPTQ computes."""
    W = W.double().clone()
    H = H.double().clone()
    n = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    g = n if group_size == -1 else group_size
    static = [_params64(W[:, a: a + g], bits, sym) for a in range(0, n, g)] if static_groups else None
    whole = _params64(W, bits, sym)
    order = torch.argsort(torch.diag(H), descending=True).tolist() if act_order else list(range(n))
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    remaining = list(order)
    for pos, q in enumerate(order):
        if group_size == -1:
            scale, zero = whole
        elif static is not None:
            scale, zero = static[q // g]
        elif pos % g == 0:
            cols = order[pos: pos + g]
            scale, zero = _params64(W[:, cols], bits, sym)
        Q[:, q] = _q64(W[:, q], scale, zero, bits)
        err = (W[:, q] - Q[:, q]) / Hinv[q, q]
        remaining.remove(q)
        W[:, remaining] -= err.unsqueeze(1) * Hinv[q, remaining].unsqueeze(0)
        Hinv = Hinv - Hinv[:, q:q + 1] @ Hinv[q:q + 1, :] / Hinv[q, q]
    return Q


def _problem(seed: int, rows: int = 12, cols: int = 160):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols ** 0.5
    X = torch.randn(400, cols, generator=g, dtype=torch.float64) @ (torch.eye(cols, dtype=torch.float64) + mix)
    X[:, ::7] *= 3.0  # uneven column scales make act-order matter
    H = 2 / X.shape[0] * X.T @ X
    return W, H


CASES = list(itertools.product([False, True], [False, True], [False, True], [-1, 32, 48, 128], [128, 32]))


@pytest.mark.parametrize("act_order,static_groups,sym,group_size,block_size", CASES)
def test_matches_slow_reference(act_order, static_groups, sym, group_size, block_size):
    W, H = _problem(seed=group_size + block_size + 7 * act_order + 3 * static_groups + sym)
    ref = slow_gptq(W, H, 3, group_size, sym, 0.01, act_order, static_groups)
    got = gptq_quantize(W, H, 3, group_size, sym, damp=0.01, block_size=block_size, act_order=act_order,
                        static_groups=static_groups, dtype=torch.float64).weight
    rel = (got - ref).abs().max() / ref.abs().max()
    assert rel <= 1e-5, rel


def test_identity_hessian_equals_rtn():
    W, _ = _problem(1)
    W = W.float()
    for gs in (-1, 32, 128):
        got = gptq_quantize(W, torch.eye(W.shape[1]), 4, gs, sym=False).weight
        assert torch.allclose(got, fake_quantize(W, 4, gs, False), atol=1e-6)


def test_diagonal_hessian_without_act_order_is_rtn_columnwise():
    W, _ = _problem(2)
    W = W.float()
    H = torch.diag(torch.rand(W.shape[1], generator=torch.Generator().manual_seed(0)) + 0.1)
    got = gptq_quantize(W, H, 3, 32, sym=True).weight
    assert torch.allclose(got, fake_quantize(W, 3, 32, True), atol=1e-6)


def test_gptq_objective_beats_rtn_on_correlated_inputs():
    W, H = _problem(3)
    W, H = W.float(), H.float()
    q = gptq_quantize(W, H, 3, 32, sym=False).weight
    r = fake_quantize(W, 3, 32, False)

    def obj(Wq):
        d = (Wq - W).double()
        return torch.trace(d @ H.double() @ d.T).item()
    assert obj(q) < obj(r)


def test_dead_columns_are_zeroed():
    W, H = _problem(4)
    H[5, :] = 0
    H[:, 5] = 0
    got = gptq_quantize(W.float(), H.float(), 4, 32, sym=False).weight
    assert torch.all(got[:, 5] == 0)


def test_cholesky_failure_raises_damp_then_errors():
    W, _ = _problem(5, cols=64)
    v = torch.randn(64, dtype=torch.float64)
    H = torch.outer(v, v)  # rank one: not positive definite without damping
    res = gptq_quantize(W.float(), H.float(), 4, 32, damp=0.0, damp_step=0.01, damp_max=0.5)
    assert res.damp == pytest.approx(0.01)
    with pytest.raises(QrobustError, match="layer 'mlp.up'.*not positive definite"):
        gptq_quantize(W.float(), -torch.eye(64), 4, 32, damp=0.01, damp_step=0.01, damp_max=0.05, name="mlp.up")


def test_group_larger_than_in_features_is_one_line():
    W, H = _problem(6, cols=64)
    with pytest.raises(QrobustError, match="larger than in_features=64"):
        gptq_quantize(W.float(), H.float(), 4, 128)


def test_act_order_group_index_follows_permutation():
    W, H = _problem(7)
    res = gptq_quantize(W.float(), H.float(), 4, 32, act_order=True)
    perm = torch.argsort(torch.diag(H.float()), descending=True)
    expected = torch.empty(160, dtype=torch.long)
    expected[perm] = torch.arange(160) // 32
    assert torch.equal(res.g_idx, expected)
    static = gptq_quantize(W.float(), H.float(), 4, 32, act_order=True, static_groups=True)
    assert torch.equal(static.g_idx, torch.arange(160) // 32)


def _columns_in_column_layout(W, Hinv, groups, block_size):
    """The lazy-batch column loop as the IST-DASLab reference lays it out ([rows, block] slices, rank-1
    updates as K=1 matmuls over the whole block tail, loss accumulated per column)."""
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    losses = torch.zeros(rows, dtype=W.dtype)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Err1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1, dtype=W.dtype)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i

            def fresh(end):
                part = W1[:, i: min(end, i2) - i1]
                if end > i2:
                    part = torch.cat([part, W[:, i2:end] - Err1[:, :i].matmul(Hinv[i1:col, i2:end])], dim=1)
                return part
            scale, zero = groups.column(col, fresh)
            w, d = W1[:, i], Hinv1[i, i]
            q = groups.qdq(w.unsqueeze(1), scale, zero).flatten()
            Q[:, col] = q
            losses += (w - q) ** 2 / d ** 2 / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q, losses


@pytest.mark.parametrize("fmt_name,group_size,block_size,act_order,static", [
    ("int", 128, 128, False, False), ("int", 48, 32, True, False), ("int", 200, 128, False, False),
    ("int", 64, 128, True, True), ("nvfp4", 16, 128, False, False), ("fp4-e2m1-g32-e8m0-sr", 32, 64, False, False)])
def test_transposed_column_loop_is_bit_identical_to_the_column_layout(fmt_name, group_size, block_size, act_order,
                                                                       static):
    """The fast loop (transposed lazy blocks) gives the same weights and losses, bit for bit, as the
    reference layout, for integer, two-level and stochastic formats, groups wider than a lazy block, act-order."""
    from qrobust.quant.formats.grid import int_format
    from qrobust.quant.formats.presets import parse_format as get_format
    from qrobust.quant.methods import gptq_core as core
    W64, H64 = _problem(seed=group_size + block_size, rows=40, cols=400)
    W, H = W64.float(), H64.float()
    fmt = int_format(3, group_size, False, "reference") if fmt_name == "int" else get_format(fmt_name)
    out = []
    for loop in (core._quantize_columns, _columns_in_column_layout):
        gen = fmt.generator("layer") if fmt.stochastic else None
        s = core.GPTQSettings(fmt=fmt, static_groups=static, generator=gen)
        groups = core._Groups(W, fmt, s)
        Wp, Hp = W.clone(), H.clone()
        if act_order:
            groups.perm = perm = torch.argsort(torch.diag(Hp), descending=True)
            Wp, Hp = Wp[:, perm], Hp[perm][:, perm]
        Hinv, _ = core._inverse_cholesky(Hp, 0.01, 0.0, 1.0, "layer")
        out.append(loop(Wp, Hinv, groups, block_size))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
