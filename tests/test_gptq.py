"""GPTQ on whole models: input groups, sequential semantics, objectives on trained layers, options."""
from __future__ import annotations

import pytest
import torch

from qrobust.errors import ConfigError, QrobustError
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QuantSpec, quantized, select_linears
from qrobust.quant.methods.gptq import _input_groups, decoder_layers, gptq_options
from qrobust.quant.formats.grid import fake_quantize


def _calib(vocab: int, n: int = 8, t: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,expected", [
    ("llama", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
               ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
    ("gpt_neox", [["attention.query_key_value"], ["attention.dense"], ["mlp.dense_h_to_4h"], ["mlp.dense_4h_to_h"]]),
])
def test_input_groups_follow_execution_and_shared_inputs(arch, expected):
    model = build_model(arch, "micro", vocab_size=64, max_positions=32)
    block = decoder_layers(model)[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    groups = _input_groups(block, linears, lambda: model(input_ids=_calib(64, 2)))
    assert [sorted(g) for g in groups] == [sorted(g) for g in expected]


def _gptq(model, calib, **opts):
    spec = QuantSpec(method="gptq", bits=3, group_size=16, sym=False,
                     include=tuple(opts.pop("include", ())), options=tuple(sorted(opts.items())))
    with quantized(model, spec, calib) as res:
        w = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
    return w, res


def test_sequential_equals_block_by_block_whole_model_passes():
    """Block 1 calibrated on quantized block-0 outputs == quantize block 0, then whole-model GPTQ of block 1."""
    # float64 activations: the two paths run the same ops on differently allocated buffers, and last-bit
    # BLAS differences can flip a rounding tie that GPTQ's error feedback then spreads over a whole group
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=2).double()
    calib = _calib(64)
    opts = dict(profile="reference", true_sequential=False)
    seq, _ = _gptq(model, calib, **opts)
    spec0 = QuantSpec(method="gptq", bits=3, group_size=16, sym=False, include=("*layers.0.*",),
                      options=tuple(sorted({**opts, "sequential": False}.items())))
    with quantized(model, spec0, calib):
        step, _ = _gptq(model, calib, include=("*layers.1.*",), sequential=False, **opts)
        layer0 = {n: m.weight.detach().clone() for n, m in select_linears(model, include=("*layers.0.*",)).items()}
    for n, w in layer0.items():
        assert torch.allclose(seq[n], w, atol=1e-5), n
    for n, w in step.items():
        if ".layers.1." in n:
            assert torch.allclose(seq[n], w, atol=1e-5), n


def test_true_sequential_changes_later_groups_only():
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=3)
    calib = _calib(64)
    a, _ = _gptq(model, calib, profile="reference", true_sequential=False)
    b, _ = _gptq(model, calib, profile="reference", true_sequential=True)
    first = "model.layers.0.self_attn.q_proj"
    assert torch.allclose(a[first], b[first], atol=1e-6)  # first group sees identical inputs either way
    assert not torch.allclose(a["model.layers.0.mlp.down_proj"], b["model.layers.0.mlp.down_proj"])


def test_fp_model_is_restored_and_records_layer_stats():
    model = build_model("gpt_neox", "micro", vocab_size=64, max_positions=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, res = _gptq(model, _calib(64), profile="gptqmodel")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for v in res.layers.values():
        assert v["damp"] == pytest.approx(0.05) and v["recon_loss"] >= 0 and v["seconds"] >= 0


def test_objective_beats_rtn_on_trained_layers_and_3bit_is_worse_than_4bit(tiny_run):
    """On a trained checkpoint: tr(ΔW S ΔWᵀ)/N with S = Σ xᵀx from FP activations (our own hooks)."""
    from qrobust.api import eval_blocks
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    model = load_checkpoint(ck)
    calib = eval_blocks(ck, split="train", n_blocks=16)
    linears = select_linears(model)
    S, N = {}, {}

    def hook(name):
        def fn(m, i, o):
            x = i[0].reshape(-1, i[0].shape[-1]).double()
            S[name] = S.get(name, 0) + x.T @ x
            N[name] = N.get(name, 0) + x.shape[0]
        return fn
    hs = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        model(input_ids=calib)
    for h in hs:
        h.remove()

    def obj(name, w):
        d = (w.double() - linears[name].weight.double())
        return torch.einsum("ij,jk,ik->", d, S[name], d).item() / N[name]

    for bits in (3, 4):
        spec = QuantSpec(method="gptq", bits=bits, group_size=16, sym=False,
                         options=(("profile", "reference"), ("sequential", False)))
        with quantized(model, spec, calib) as res:
            q = {n: m.weight.detach().clone() for n, m in linears.items()}
        for n in linears:
            rtn = obj(n, fake_quantize(linears[n].weight, bits, 16, False))
            g = obj(n, q[n])
            assert g <= rtn * (1 + 1e-6), (n, g, rtn)
            assert res.layers[n]["recon_loss"] == pytest.approx(g, rel=1e-3)
        if bits == 3:
            three = sum(res.layers[n]["recon_loss"] for n in linears)
        else:
            assert three > sum(res.layers[n]["recon_loss"] for n in linears)


def test_options_are_validated():
    assert gptq_options({"profile": "llmcompressor"}).act_order is True
    assert gptq_options({"profile": "reference", "damp": 0.02}).damp == 0.02
    with pytest.raises(ConfigError, match="unknown GPTQ option"):
        gptq_options({"dampp": 0.1})
    with pytest.raises(ConfigError, match="unknown GPTQ profile"):
        gptq_options({"profile": "autogptq"})
    with pytest.raises(ConfigError, match="wrong type"):
        gptq_options({"act_order": "yes"})


def test_gptq_without_calibration_is_one_line():
    model = build_model("gpt_neox", "micro", vocab_size=64, max_positions=32)
    with pytest.raises(QrobustError, match="needs calibration"):
        with quantized(model, QuantSpec(method="gptq", bits=4)):
            pass


def test_input_groups_are_by_object_identity_not_value():
    """Same input object -> one group; an equal-valued copy is a different input (its own Hessian)."""
    class Fork(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (torch.nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):
            h = x * 1.0
            y = self.a(h) + self.b(h)  # shared input object
            return y + self.c(h.clone()) + self.d(h.clone())  # equal values, distinct objects

    m = Fork()
    lin = {"a": m.a, "b": m.b, "c": m.c, "d": m.d}
    assert _input_groups(m, lin, lambda: m(torch.randn(2, 8))) == [["a", "b"], ["c"], ["d"]]


def test_calibration_set_shares_fp_only_hessians_between_variants():
    """Variants of one model reuse what only the FP weights determine; the weights are unchanged by it."""
    from qrobust.quant import CalibrationSet
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=6)
    tokens = _calib(64)
    shared = CalibrationSet(tokens)
    for opts in (dict(profile="reference", sequential=False), dict(profile="gptqmodel")):
        for bits in (3, 4):
            spec = QuantSpec(method="gptq", bits=bits, group_size=16, options=tuple(sorted(opts.items())))
            with quantized(model, spec, shared):
                a = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
            with quantized(model, spec, tokens):
                b = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
            assert all(torch.equal(a[n], b[n]) for n in a), (opts, bits)
    # the 4-bit variant of each family reused the 3-bit one's FP Hessians (all of them without
    # sequential; block 0's first group with true-sequential)
    assert shared.hits == 2


def test_tf32_is_off_during_gptq_and_restored():
    model = build_model("llama", "micro", vocab_size=64, max_positions=32)
    seen = []
    lin = model.model.layers[0].self_attn.q_proj
    lin.register_forward_hook(lambda m, i, o: seen.append(torch.backends.cuda.matmul.allow_tf32))
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with quantized(model, QuantSpec(method="gptq", bits=4, group_size=16), _calib(64)):
            pass
        assert seen and not any(seen)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
