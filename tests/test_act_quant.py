"""Activation quantization (W8A8, W4A8) and SmoothQuant: the math equals compressed-tensors' token and
tensor quantizers bit for bit and hand-computed values; the hooks quantize exactly each selected
linear's input (static scales from the calibration pass of the weight-quantized model), go away on exit
and on error; SmoothQuant leaves the FP function unchanged and helps W8A8 where channels have outliers;
what cannot be done is refused in one line; the layer-streamed numbers equal the in-memory ones."""
from __future__ import annotations

import pytest
import torch

from qrobust.errors import ConfigError, QrobustError
from qrobust.evaluate import evaluate_loss
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QuantSpec, quantized, select_linears
from qrobust.quant.formats.activations import act_format, fake_quantize_act, observe, static_params
from qrobust.quant.pipelines.smoothquant import smooth_model
from qrobust.quant.pipelines.streamed import stream_checkpoint


def _x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 64, generator=g) * torch.logspace(-3, 2, 64)  # outlier channels
    x[0, 0] = 0  # an all-zero token
    x[1, 2, 7] = 1e4
    return x


@pytest.mark.parametrize("kind,name", [("int", "int8-token"), ("float", "fp8-e4m3-token")])
def test_token_and_tensor_equal_compressed_tensors(kind, name):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, compute_dynamic_scales_and_zp
    x = _x()
    args = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="token", dynamic=True)
    s, z = compute_dynamic_scales_and_zp(x, args, module=None)
    assert torch.equal(fake_quantize_act(x, act_format(name)), fake_quantize(x, s, z, args))
    if kind == "int":  # asymmetric int8 tokens too (zero point per token)
        args = QuantizationArgs(num_bits=8, type=kind, symmetric=False, strategy="token", dynamic=True)
        s, z = compute_dynamic_scales_and_zp(x + 0.3, args, module=None)
        assert torch.equal(fake_quantize_act(x + 0.3, act_format("int8-token-asym")), fake_quantize(x + 0.3, s, z, args))
    args = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="tensor")
    fmt = act_format(name.replace("token", "tensor"))
    s, z = calculate_qparams(x.amin().reshape(1), x.amax().reshape(1), args)
    y = x * 1.7  # beyond the calibrated range: clipped
    assert torch.equal(fake_quantize_act(y, fmt, static_params(fmt, observe(x, fmt))), fake_quantize(y, s, z, args))


def test_hand_computed_values():
    # int8 (compressed-tensors' grid): amax 127.5 -> scale 1; clamp to [-128, 127], then round half to even
    x = torch.tensor([[127.5, -3.5, 2.5, 0.4]])
    assert fake_quantize_act(x, act_format("int8-token")).tolist() == [[127.0, -4.0, 2.0, 0.0]]
    # FP8 E4M3: amax 448 -> scale 1; -3.3 -> -3.25 (quantum 0.25 in [2, 4)); 17 -> 16 (tie to even, quantum 2)
    x = torch.tensor([[448.0, -3.3, 17.0, 0.0]])
    assert fake_quantize_act(x, act_format("fp8-e4m3-token")).tolist() == [[448.0, -3.25, 16.0, 0.0]]
    # static per tensor: calibrated range [-1, 2] -> int8 scale 2/127.5; 5 clips to 127 steps
    fmt = act_format("int8-tensor")
    params = static_params(fmt, torch.tensor([[-1.0, 2.0]]))
    s = 2.0 / 127.5
    assert torch.allclose(params[0], torch.tensor([[s]]))
    out = fake_quantize_act(torch.tensor([[5.0, 1.0, -1.0]]), fmt, params)
    assert torch.allclose(out, torch.tensor([[127 * s, 64 * s, -64 * s]]), rtol=0, atol=1e-6)


def test_names_refused_in_one_line():
    with pytest.raises(ConfigError, match="act format 'int8-head'"):
        QuantSpec(method="rtn", bits=8, group_size=-1, act="int8-head")
    with pytest.raises(ConfigError, match="kv format 'fp8-e4m3-g32'"):
        QuantSpec(method="rtn", bits=8, group_size=-1, kv="fp8-e4m3-g32")
    with pytest.raises(ConfigError, match="smoothquant .* needs an activation format"):
        QuantSpec(method="rtn", bits=8, group_size=-1, options=(("smoothquant", 0.5),))
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="smoothquant must be"):
            QuantSpec(method="gptq", format="w8a8-int8", options=(("smoothquant", bad),)).to_dict()


def _neox(seed: int = 3):
    return build_model("gpt_neox", "micro", vocab_size=96, max_positions=64, seed=seed).eval()


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 96, (n, 24), generator=torch.Generator().manual_seed(seed))


def test_refusals_before_any_work():
    model, calib = _neox(), _tokens(4, 1)
    w = {n: lin.weight.clone() for n, lin in select_linears(model).items()}
    with pytest.raises(ConfigError, match="AWQ cannot search its scales under activation quantization"):
        with quantized(model, QuantSpec(method="awq", bits=8, group_size=-1, act="int8-token"), calib):
            pass
    with pytest.raises(QrobustError, match="needs calibration data"):
        with quantized(model, QuantSpec(method="rtn", format="int8-channel+a-int8-tensor")):
            pass
    assert all(torch.equal(w[n], lin.weight) for n, lin in select_linears(model).items())


def _capture(linears, quantized_too: bool):
    """Pre-hooks seeing each linear's raw input (prepended: before the act hook) and, after it, what the
    linear gets."""
    raw, got, handles = {}, {}, []
    for n, lin in linears.items():
        handles.append(lin.register_forward_pre_hook(lambda m, a, n=n: raw.__setitem__(n, a[0]), prepend=True))
        if quantized_too:
            handles.append(lin.register_forward_pre_hook(lambda m, a, n=n: got.__setitem__(n, a[0])))
    return raw, got, handles


@pytest.mark.parametrize("name", ["int8-token", "fp8-e4m3-token", "int8-tensor", "fp8-e4m3-tensor"])
def test_hooks_quantize_each_linear_input(name):
    model, calib, batch = _neox(), _tokens(10, 1), _tokens(2, 2)
    weight_only = QuantSpec(method="rtn", bits=8, group_size=-1)
    fmt = act_format(name)
    ranges = {}
    with quantized(model, weight_only):  # the calibration pass, independently: weight-quantized model, FP inputs
        raw, _, handles = _capture(select_linears(model), False)
        with torch.no_grad():
            for b in torch.split(calib, 8):
                model(input_ids=b)
                for n, x in raw.items():
                    r = torch.stack([x.amin(), x.amax()]).reshape(1, 2)
                    ranges[n] = r if n not in ranges else torch.stack(
                        [torch.minimum(ranges[n][:, 0], r[:, 0]), torch.maximum(ranges[n][:, 1], r[:, 1])], 1)
        for h in handles:
            h.remove()
    with quantized(model, QuantSpec(method="rtn", bits=8, group_size=-1, act=name), calib):
        raw, got, handles = _capture(select_linears(model), True)
        with torch.no_grad():
            model(input_ids=batch)
        for h in handles:
            h.remove()
    assert len(got) == 8
    for n, x in raw.items():
        params = static_params(fmt, ranges[n]) if name.endswith("tensor") else None
        assert torch.equal(got[n], fake_quantize_act(x, fmt, params)), n
        assert not torch.equal(got[n], x)
    assert all(not lin._forward_pre_hooks for lin in select_linears(model).values())


def test_hooks_and_weights_gone_after_an_error():
    model, batch = _neox(), _tokens(2, 2)
    with torch.no_grad():
        ref = model(input_ids=batch).logits
    with pytest.raises(RuntimeError, match="boom"):
        with quantized(model, QuantSpec(method="rtn", format="w8a8-fp8")):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch).logits, ref)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_smoothquant_migration_alone_keeps_the_fp_function(arch):
    model = build_model(arch, "micro", vocab_size=96, max_positions=64, seed=3).eval()
    batch = _tokens(3, 2)
    with torch.no_grad():
        ref = model(input_ids=batch).logits
        smooth_model(model, select_linears(model), _tokens(8, 1), 0.5, 8)
        out = model(input_ids=batch).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-6
    norms = [m.weight for n, m in model.named_modules() if n.endswith("input_layernorm")]
    assert all(not torch.all(w == 1) for w in norms)  # something was folded


def _with_outliers(model) -> None:
    """Four input channels of every norm-fed linear 100x larger, compensated in the weights (same FP function)."""
    with torch.no_grad():
        for n, mod in model.named_modules():
            if n.endswith("layernorm"):
                mod.weight[:4] *= 100
                mod.bias[:4] *= 100
        for n, lin in select_linears(model).items():
            if n.endswith(("query_key_value", "dense_h_to_4h")):
                lin.weight[:, :4] /= 100


def test_smoothquant_helps_w8a8_with_outlier_channels():
    model, calib, batch = _neox(), _tokens(8, 1), _tokens(6, 2)
    _with_outliers(model)
    with torch.no_grad():
        ref = model(input_ids=batch).logits
    fp = evaluate_loss(model, batch, 3).loss
    errs, dqs = {}, {}
    for opts in ((), (("smoothquant", 0.5),)):
        spec = QuantSpec(method="rtn", format="w8a8-int8", options=opts)
        with quantized(model, spec, calib):
            with torch.no_grad():
                errs[opts] = float((model(input_ids=batch).logits - ref).pow(2).mean())
            dqs[opts] = abs(evaluate_loss(model, batch, 3).loss / fp - 1)
    (plain, sq) = errs.values()
    assert sq < plain / 4, errs
    assert list(dqs.values())[1] < list(dqs.values())[0], dqs


def test_streamed_equals_in_memory(tmp_path):
    specs = [QuantSpec(method="rtn", format="int8-channel+a-int8-tensor"),
             QuantSpec(method="rtn", format="w8a8-fp8"),
             QuantSpec(method="rtn", format="int4-g16+a-int8-token"),
             QuantSpec(method="rtn", format="w8a8-int8", options=(("smoothquant", 0.5),)),
             QuantSpec(method="gptq", format="int8-channel+a-fp8-e4m3-tensor",
                       options=(("calib_batch_size", 3), ("smoothquant", 0.8)))]
    blocks, calib = _tokens(5, 0), _tokens(7, 1)
    for arch in ("gpt_neox", "llama"):
        build_model(arch, "micro", vocab_size=96, max_positions=64, seed=3).save_pretrained(tmp_path / arch)
        run = stream_checkpoint(tmp_path / arch, specs, blocks, 2, {s: calib for s in specs})
        model = load_checkpoint(tmp_path / arch)
        assert run.fp.block_sums == evaluate_loss(model, blocks, 2).block_sums
        for v in run.variants:
            with quantized(model, v.spec, calib) as res:
                q = evaluate_loss(model, blocks, 2)
            assert v.q.block_sums == q.block_sums, (arch, v.spec.label)
            assert {n: d["rel_err"] for n, d in v.layers.items()} == {n: d["rel_err"] for n, d in res.layers.items()}


def test_streamed_refuses_like_in_memory(tiny_run):
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    blocks = _tokens(2, 0)
    with pytest.raises(QrobustError, match="static .* need calibration data"):
        stream_checkpoint(ck, [QuantSpec(method="rtn", format="int8-channel+a-int8-tensor")], blocks)
    with pytest.raises(ConfigError, match="AWQ cannot search its scales under activation quantization"):
        awq = QuantSpec(method="awq", bits=8, group_size=-1, act="int8-token")  # refused as the variant is made
        stream_checkpoint(ck, [awq], blocks, calibration={awq: blocks})


def test_which_variants_calibrate_and_keys():
    from qrobust.config import SweepConfig, parse_config
    from qrobust.quant import needs_calibration
    from qrobust.sweeps.plan import calibration_identity
    dynamic = QuantSpec(method="rtn", format="w8a8-int8")
    static = QuantSpec(method="rtn", format="int8-channel+a-int8-tensor")
    kv_static = QuantSpec(method="rtn", format="int8-channel", kv="fp8-e4m3-head")
    kv_dynamic = QuantSpec(method="rtn", format="int8-channel", kv="fp8-e4m3-token")
    smooth = QuantSpec(method="rtn", format="w8a8-int8", options=(("smoothquant", 0.5),))
    plain = QuantSpec(method="rtn", bits=8, group_size=-1)
    assert [needs_calibration(s) for s in (dynamic, static, kv_static, kv_dynamic, smooth, plain)] == \
        [False, True, True, False, True, False]
    cfg = parse_config(SweepConfig, {"trajectory": "x", "out": "y"})
    assert calibration_identity(cfg, dynamic) is None and calibration_identity(cfg, static) is not None
    # the option enters the key (and label) only when set
    assert "options" in smooth.to_dict() and smooth.to_dict()["options"] == {"smoothquant": 0.5}
    assert dynamic.to_dict()["options"] == {} and smooth.label == "rtn-w8ch+a-int8-token-smoothquant=0.5"


def test_paths_that_cannot_do_it_refuse(tmp_path):
    from qrobust.workflows.checkpoint import quantize_checkpoint
    with pytest.raises(ConfigError, match="stochastic rounding"):
        QuantSpec(method="rtn", bits=8, group_size=-1, act="int8-token-sr")
    _neox().save_pretrained(tmp_path / "ck")
    with pytest.raises(QrobustError, match="holds weights only"):
        quantize_checkpoint(tmp_path / "ck", tmp_path / "out", QuantSpec(method="rtn", format="w8a8-fp8"))
    assert not (tmp_path / "out").exists()


def test_smoothquant_shares_no_fp_memo_with_other_variants():
    from qrobust.quant import CalibrationSet
    model, calib, batch = _neox(), _tokens(8, 1), _tokens(4, 2)
    plain = QuantSpec(method="gptq", format="w8a8-int8")
    smooth = QuantSpec(method="gptq", format="w8a8-int8", options=(("smoothquant", 0.5),))
    alone = {}
    for spec in (plain, smooth):
        with quantized(model, spec, calib):
            alone[spec] = evaluate_loss(model, batch, 2).block_sums
    shared = CalibrationSet(calib)
    for spec in (plain, smooth, plain):  # the FP block-0 Hessians are memoised for the plain variant
        with quantized(model, spec, shared):
            assert evaluate_loss(model, batch, 2).block_sums == alone[spec], spec.label
    assert shared.hits == 1 and alone[plain] != alone[smooth]
