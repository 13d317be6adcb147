"""Applying quantizers: which layers, copy vs restore, per-layer errors, and the effect on loss."""
from __future__ import annotations

import pytest
import torch

from qrobust.errors import ConfigError, QrobustError
from qrobust.evaluate import evaluate_loss
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QuantSpec, quantize, quantized, select_linears
from qrobust.quant.formats.grid import fake_quantize


@pytest.fixture(params=["gpt_neox", "llama"])
def model(request):
    return build_model(request.param, "micro", vocab_size=64, max_positions=32, seed=1)


def test_every_linear_but_the_head(model):
    names = set(select_linears(model))
    all_linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = {n for n, m in model.named_modules() if m is model.get_output_embeddings()}
    assert len(head) == 1
    assert names == all_linears - head
    per_layer = {"gpt_neox": 4, "llama": 7}[model.config.model_type]  # qkv,dense,h_to_4h,4h_to_h | q,k,v,o,gate,up,down
    assert len(names) == per_layer * model.config.num_hidden_layers


def test_include_exclude_globs(model):
    mlp = select_linears(model, include=("*mlp*",))
    assert mlp and all("mlp" in n for n in mlp)
    no_l0 = select_linears(model, exclude=("*layers.0.*",))
    assert no_l0 and not any(".layers.0." in n for n in no_l0)
    with pytest.raises(QrobustError):
        select_linears(model, include=("nothing-matches",))


def test_context_manager_restores_bitwise(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = QuantSpec(bits=3, group_size=16)
    with quantized(model, spec) as res:
        changed = [n for n, m in select_linears(model).items() if not torch.equal(m.weight, before[n + ".weight"])]
        assert changed  # really quantized inside the block
        assert res.summary()["n_layers"] == len(select_linears(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_restores_after_an_exception(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        with quantized(model, QuantSpec(bits=2, group_size=16)):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_copy_leaves_model_untouched_and_errors_are_exact(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, res = quantize(model, method="rtn", bits=4, group_size=16, sym=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for name, lin in select_linears(model).items():
        expected = fake_quantize(lin.weight, 4, 16, False)
        qlin = dict(qmodel.named_modules())[name]
        assert torch.equal(qlin.weight, expected)
        d = expected - lin.weight
        assert res.layers[name]["rel_err"] == pytest.approx((d.norm() / lin.weight.norm()).item(), rel=1e-5)
        assert res.layers[name]["mse"] == pytest.approx(d.pow(2).mean().item(), rel=1e-5)
    # the head and embeddings are not quantized
    assert torch.equal(qmodel.get_output_embeddings().weight, model.get_output_embeddings().weight)


@pytest.mark.parametrize("kw", [dict(bits=9), dict(bits=1), dict(group_size=0), dict(group_size=-3),
                                dict(method="nope")])
def test_spec_validation(kw):
    with pytest.raises(ConfigError):
        QuantSpec(**kw)


def test_weight_error_falls_with_bits_and_8bit_keeps_the_loss(tiny_run):
    from qrobust.api import eval_blocks
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    model = load_checkpoint(ck)
    blocks = eval_blocks(ck, n_blocks=8)
    fp = evaluate_loss(model, blocks).loss
    losses, errs = {}, {}
    for bits in (2, 3, 4, 8):
        with quantized(model, QuantSpec(bits=bits, group_size=-1, sym=False)) as res:
            losses[bits] = evaluate_loss(model, blocks).loss
            errs[bits] = res.summary()["weight_mse"]
    assert errs[2] > errs[3] > errs[4] > errs[8]
    assert abs(losses[8] / fp - 1) < 2e-3
    assert losses[2] != fp
    assert evaluate_loss(model, blocks).loss == fp  # restored exactly


def test_group_larger_than_a_layer_is_one_line_naming_the_layer(model):
    with pytest.raises(QrobustError, match=r"layer '.*': group size 128 is larger than in_features=32"):
        with quantized(model, QuantSpec(bits=4, group_size=128)):
            pass
    assert all(torch.isfinite(p).all() for p in model.parameters())
