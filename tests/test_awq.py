"""AWQ: its grid (hand-computed), scale folding (FP function unchanged), clip and scale searches, objectives
on trained layers, restoring the FP model, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qrobust.errors import ConfigError, QrobustError
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QuantSpec, quantized, select_linears
from qrobust.quant.methods.awq import fold
from qrobust.quant.methods.awq_mappings import generic_mappings, known_mappings
from qrobust.quant.methods.awq_options import AWQOptions, awq_fake_quantize, awq_options
from qrobust.quant.methods.awq_search import search_clip
from qrobust.quant.pipelines.blocks import decoder_layers
from qrobust.quant.formats.grid import GroupSizeError


def test_grid_zero_point_hand_computed():
    # lo=-0.3, hi=0.5, 2 bits: scale 0.8/3, zero = -round(-1.125) = 1
    w = torch.tensor([[-0.3, 0.1, 0.5]])
    s = 0.8 / 3
    assert torch.allclose(awq_fake_quantize(w, 2, -1, True), torch.tensor([[-s, 0.0, 2 * s]]), atol=1e-7)
    # all positive: AWQ does not widen the range to 0, and clamps the zero point to the grid:
    # scale 0.2, zero = -round(5) -> 0, every value rounds to >= 5 and clips at 3 -> 0.6
    w = torch.tensor([[1.0, 1.2, 1.4, 1.6]])
    assert torch.allclose(awq_fake_quantize(w, 2, -1, True), torch.full((1, 4), 0.6), atol=1e-6)


def test_grid_symmetric_hand_computed():
    # 3 bits: scale = 0.7 / 3, levels -4..3
    w = torch.tensor([[-0.7, 0.2, 0.3, -0.05]])
    s = 0.7 / 3
    expect = torch.tensor([[-3 * s, 1 * s, 1 * s, 0.0]])
    assert torch.allclose(awq_fake_quantize(w, 3, -1, False), expect, atol=1e-7)


def test_grid_groups_are_independent():
    w = torch.randn(4, 12)
    q = awq_fake_quantize(w, 3, 4, True)
    for a in range(0, 12, 4):
        assert torch.equal(q[:, a:a + 4], awq_fake_quantize(w[:, a:a + 4], 3, -1, True))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_folding_scales_keeps_the_fp_function(arch):
    model = build_model(arch, "micro", vocab_size=64, max_positions=32, seed=3).double()
    block = decoder_layers(model)[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    maps = known_mappings(block, set(linears))
    assert [m.name for m in maps] == (["attn_in", "attn_out", "mlp_in", "mlp_out"] if arch == "llama"
                                      else ["attn_in", "mlp_in"])
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for m in maps:
            d = linears[m.layers[0]].in_features
            fold(m, linears, torch.rand(d, dtype=torch.float64) * 4 + 0.1)
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-9)


def test_generic_mappings_find_norm_fed_groups_only():
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=3)
    block = decoder_layers(model)[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    ids = torch.randint(0, 64, (1, 8))
    maps = generic_mappings(block, linears, lambda: model(input_ids=ids))
    names = {mod: nm for nm, mod in block.named_modules()}
    got = sorted((names[m.prev], tuple(sorted(m.layers))) for m in maps)
    # o's input is the attention output and down's is act(gate)·up: neither is a module output to fold into
    assert got == [("input_layernorm", ("self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj")),
                   ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))]


def test_clip_search_never_increases_output_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g)
    w[0, 3] = 8.0  # an outlier weight on a nearly silent input channel: clipping it costs little and
    x = torch.randn(200, 32, generator=g)  # makes the grid of the rest of its group finer
    x[:, 3] *= 0.01
    spec = QuantSpec(method="awq", bits=3, group_size=16, sym=False)
    mx = search_clip(w, x, spec, AWQOptions())
    for gi, a in enumerate((0, 16)):
        wg, xg = w[:, a:a + 16], x[:, a:a + 16]
        none = (awq_fake_quantize(wg, 3, -1, True) @ xg.T - wg @ xg.T).pow(2).mean(1)
        clipped = torch.clamp(wg, -mx[:, gi:gi + 1], mx[:, gi:gi + 1])
        best = (awq_fake_quantize(clipped, 3, -1, True) @ xg.T - wg @ xg.T).pow(2).mean(1)
        assert torch.all(best <= none + 1e-7)
    assert mx[0, 0] < 8.0  # the outlier row was clipped


def test_no_search_no_clip_is_rtn_on_the_awq_grid():
    """One grid point (ratio 0) without duo scaling gives s = 1: AWQ reduces to AWQ-grid RTN."""
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=5)
    calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    ref = {n: awq_fake_quantize(m.weight.detach(), 4, 16, True) for n, m in select_linears(model).items()}
    spec = QuantSpec(method="awq", bits=4, group_size=16, sym=False,
                     options=(("clip", False), ("duo_scaling", False), ("n_grid", 1)))
    with quantized(model, spec, calib):
        for n, m in select_linears(model).items():
            assert torch.allclose(m.weight, ref[n], atol=1e-6), n


def test_fp_model_restored_including_norms():
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    with quantized(model, QuantSpec(method="awq", bits=3, group_size=16, sym=False), calib):
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert any("layernorm" in k for k in changed)  # scales were folded into the norms
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_objectives_on_trained_layers(tiny_run):
    """Trained checkpoint: the chosen scales beat s = 1 on AWQ's own objective, 3-bit is worse than 4-bit,
    and at 3 bits the whole-model loss is lower than with RTN on the same grid."""
    from qrobust.api import eval_blocks
    from qrobust.evaluate import evaluate_loss
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    model = load_checkpoint(ck)
    calib = eval_blocks(ck, split="train", n_blocks=16)
    ev = eval_blocks(ck, split="val", n_blocks=16)
    fp = evaluate_loss(model, ev).loss
    total = {}
    for bits in (3, 4):
        spec = QuantSpec(method="awq", bits=bits, group_size=16, sym=False)
        with quantized(model, spec, calib) as res:
            awq_loss = evaluate_loss(model, ev).loss
        scaled = [v for v in res.layers.values() if "awq_loss" in v]
        assert scaled
        for v in scaled:
            assert v["awq_loss"] <= v["awq_rtn_loss"] * (1 + 1e-9) or v["awq_ratio"] == 0.0
        total[bits] = sum(v["awq_loss"] for v in scaled)
        rtn = {n: awq_fake_quantize(m.weight.detach(), bits, 16, True) for n, m in select_linears(model).items()}
        keep = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
        with torch.no_grad():
            for n, m in select_linears(model).items():
                m.weight.copy_(rtn[n])
            rtn_loss = evaluate_loss(model, ev).loss
            for n, m in select_linears(model).items():
                m.weight.copy_(keep[n])
        if bits == 3:  # at 4 bits both changes are below this barely trained model's noise (~1e-4)
            assert awq_loss < rtn_loss, (awq_loss, rtn_loss, fp)
    assert total[3] > total[4]


def test_bad_input_is_one_line():
    with pytest.raises(ConfigError, match="unknown AWQ option"):
        awq_options({"grid": 10})
    with pytest.raises(ConfigError, match="wrong type"):
        awq_options({"clip": "yes"})
    with pytest.raises(ConfigError, match="mapping"):
        awq_options({"mapping": "llama"})
    model = build_model("llama", "micro", vocab_size=64, max_positions=32)
    calib = torch.randint(0, 64, (2, 16))
    with pytest.raises(GroupSizeError, match="larger than in_features"):
        with quantized(model, QuantSpec(method="awq", bits=4, group_size=4096), calib):
            pass

    class Flat(nn.Module):  # no decoder blocks at all
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(64, 8), nn.Linear(8, 8)

        def forward(self, input_ids, **_):
            return self.fc(self.emb(input_ids))
    with pytest.raises(QrobustError, match="no decoder blocks found"):
        with quantized(Flat(), QuantSpec(method="awq", bits=4, group_size=8), calib):
            pass


def test_cli_eval_with_awq(tiny_run, capsys):
    import json as _json

    from qrobust.cli import main
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    assert main(["eval", str(ck), "--method", "awq", "--bits", "3", "--group-size", "16", "--asym",
                 "--opt", "n_grid=5", "--calib-samples", "8", "--n-blocks", "4", "--json"]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert out["variant"] == "awq-w3g16-asym-n_grid=5" and out["loss_q"] > 0
