"""Staged block runs (compute each submodule once across GPTQ's true-sequential steps) and S = Σ xᵀx."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qrobust.models import build_model
from qrobust.quant import QuantSpec, quantized, select_linears
from qrobust.quant.methods.gptq import decoder_layers
from qrobust.quant.methods.gptq_core import gptq_quantize
from qrobust.quant.methods.hessian import XtX
from qrobust.quant.pipelines.staged import StagedBlock, probe_block


@pytest.mark.parametrize("dim,blocks", [(7, 1), (300, 4), (300, 3), (64, 5)])
def test_xtx_equals_float64_reference(dim, blocks):
    g = torch.Generator().manual_seed(dim)
    xs = [torch.randn(3, 5, dim, generator=g) for _ in range(3)]
    acc = XtX(dim, blocks=blocks)
    for x in xs:
        acc.add(x)
    ref = sum(x.reshape(-1, dim).double().T @ x.reshape(-1, dim).double() for x in xs)
    assert acc.n == 45
    S = acc.full()
    assert torch.allclose(S.double(), ref, rtol=1e-5, atol=1e-4)
    assert torch.equal(S, S.T)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1024])
def test_in_place_symmetrisation_is_bit_identical_to_mirroring_the_upper_triangle(chunk):
    g = torch.Generator().manual_seed(chunk)
    acc = XtX(300, blocks=4)
    acc.add(torch.randn(40, 300, generator=g))
    upper = acc._S.clone()
    expect = torch.triu(upper) + torch.triu(upper, 1).T
    S = acc.full(chunk=chunk)
    assert torch.equal(S, expect) and S.data_ptr() == acc._S.data_ptr()  # no second matrix
    assert torch.equal(acc.full(chunk=chunk), expect)  # idempotent
    with pytest.raises(RuntimeError, match="after full"):
        acc.add(torch.randn(2, 300))


def test_stacked_rows_equal_separate_gptq_calls():
    """GPTQ treats rows independently: one call on [W1; W2] == two calls (what group stacking relies on)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 32, generator=g, dtype=torch.float64)
    H = 2 / 200 * X.T @ X
    W1, W2 = torch.randn(5, 32, generator=g, dtype=torch.float64), torch.randn(3, 32, generator=g, dtype=torch.float64)
    both = gptq_quantize(torch.cat([W1, W2]), H, 3, 8, sym=False, act_order=True, dtype=torch.float64)
    a = gptq_quantize(W1, H, 3, 8, sym=False, act_order=True, dtype=torch.float64)
    b = gptq_quantize(W2, H, 3, 8, sym=False, act_order=True, dtype=torch.float64)
    assert torch.allclose(both.weight, torch.cat([a.weight, b.weight]), atol=1e-12)
    assert both.loss == pytest.approx(a.loss + b.loss)
    assert torch.allclose(both.row_loss, torch.cat([a.row_loss, b.row_loss]))


def _weights(model, **opts):
    calib = torch.randint(0, 64, (6, 24), generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(method="gptq", bits=3, group_size=16, options=tuple(sorted({**opts, "calib_batch_size": 2}.items())))
    with quantized(model, spec, calib):
        return {n: m.weight.detach().clone() for n, m in select_linears(model).items()}


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("true_sequential", [True, False])
def test_replay_gives_the_same_weights_as_recomputing(arch, true_sequential):
    model = build_model(arch, "micro", vocab_size=64, max_positions=32, seed=4).double()
    a = _weights(model, profile="reference", true_sequential=true_sequential, replay=True)
    b = _weights(model, profile="reference", true_sequential=true_sequential, replay=False)
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-9), n


def test_replay_runs_each_linear_once_per_batch():
    """True-sequential GPTQ with replay costs one block forward: every linear sees each batch once
    (plus the one-sample probe); without replay, early linears rerun at every later step."""
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=4)
    calls: dict[str, int] = {}
    for n, m in select_linears(model).items():  # count real computations (replay calls forward directly)
        def counted(x, n=n, f=m.forward):
            calls[n] = calls.get(n, 0) + 1
            return f(x)
        m.forward = counted
    _weights(model, profile="gptqmodel", replay=True)  # 6 sequences in 3 batches
    first = "model.layers.0."
    last = f"model.layers.{model.config.num_hidden_layers - 1}."
    for n, c in calls.items():
        if n.startswith(first):
            assert c == 3 + 1, (n, c)
        if n.startswith(last) and n.endswith("down_proj"):
            assert c == 1, (n, c)  # the last block's outputs are never needed: only the probe ran it
    calls.clear()
    _weights(model, profile="gptqmodel", replay=False)
    assert calls[first + "self_attn.q_proj"] == 3 * 4 + 1  # stops at o, gate, down, then the full block


class _InPlace(nn.Module):
    """A block whose code edits a kept output in place after the first linear: replay must notice."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.lin1, self.lin2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.norm(x)
        a = self.lin1(h)
        h.mul_(2.0)
        return self.lin2(h + a)


def test_in_place_edits_of_kept_outputs_are_detected():
    torch.manual_seed(0)
    block = _InPlace()
    inputs = [((torch.randn(2, 3, 8),), {}) for _ in range(2)]
    linears = {"lin1": block.lin1, "lin2": block.lin2}
    probe = probe_block(block, linears, lambda: block(*inputs[0][0]))
    assert probe.groups == [["lin1"], ["lin2"]]
    staged = StagedBlock(block, inputs, linears, probe)
    seen = []
    staged.run({"lin1": seen.append}, stop_at="lin1")
    assert block.norm in staged.cache  # kept: it finished before any unquantized linear ran
    with torch.no_grad():
        block.lin1.weight.mul_(0.5)  # "quantize" lin1
    staged.mark_quantized(["lin1"])
    staged.run({}, stop_at="lin2")
    with torch.no_grad():
        block.lin2.weight.add_(0.1)
    staged.mark_quantized(["lin2"])
    outs = staged.run({}, stop_at=None)
    with torch.no_grad():
        for (args, _), out in zip(inputs, outs):
            assert torch.allclose(out, block(*args), atol=1e-6)


def test_tail_modules_are_found_for_llama_and_neox():
    for arch, tails in [("llama", {"self_attn": "o_proj", "mlp": "down_proj"}),
                        ("gpt_neox", {"attention": "dense", "mlp": "dense_4h_to_h"})]:
        model = build_model(arch, "micro", vocab_size=64, max_positions=32)
        block = decoder_layers(model)[0]
        linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        names = {m: n for n, m in block.named_modules()}
        probe = probe_block(block, linears, lambda: model(input_ids=torch.randint(0, 64, (1, 8))))
        found = {names[mod]: names[lin].rsplit(".", 1)[-1] for mod, (lin, _) in probe.tails.items()}
        assert found == tails, arch
