"""AWQ with float formats (NVFP4, MXFP4, FP8): at the scales it picks, its objective (recomputed here with
our own hooks) is below RTN's on the same format, its weights lie on the format's grid, its clip search
rounds on the format too; integer formats keep AWQ's integer numbers; what AWQ cannot use is refused
when the variant is made."""
from __future__ import annotations

import pytest
import torch

from qrobust.errors import ConfigError
from qrobust.models import load_checkpoint
from qrobust.quant import QuantSpec, quantized, select_linears
from qrobust.quant.formats.elements import ELEMENTS, round_float
from qrobust.quant.formats.grid import fake_quantize_format
from qrobust.quant.formats.presets import FORMATS
from qrobust.quant.methods.awq_options import AWQOptions
from qrobust.quant.methods.awq_search import search_clip
from qrobust.quant.pipelines.blocks import decoder_layers


# GPT-NeoX's AWQ mappings: (the norm that takes 1/s, the linear whose columns take s); AWQ judges a scale by
# the linear's output error on the FP inputs (awq_mappings.py)
MAPS = (("input_layernorm", "attention.query_key_value"), ("post_attention_layernorm", "mlp.dense_h_to_4h"))


def _inputs(model, calib) -> dict[tuple[int, str], torch.Tensor]:
    """Each mapped linear's FP inputs on the calibration tokens, captured by our own pre-hooks."""
    blocks = decoder_layers(model)
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    hs = [b.get_submodule(lin).register_forward_pre_hook(
        lambda m, a, key=(i, lin): seen.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1])))
        for i, b in enumerate(blocks) for _, lin in MAPS]
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for h in hs:
        h.remove()
    return {k: torch.cat(v).double() for k, v in seen.items()}


def _out_mse(x: torch.Tensor, w_eq: torch.Tensor, w: torch.Tensor) -> float:
    return float((x @ (w_eq.double() - w.double()).T).pow(2).mean())


@pytest.fixture(scope="module")
def trained(tiny_run):
    from qrobust.api import eval_blocks
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    return load_checkpoint(ck), eval_blocks(ck, split="train", n_blocks=16)


@pytest.mark.parametrize("fmt,profile", [("nvfp4", "llmcompressor"), ("nvfp4", "autoawq"), ("mxfp4", "llmcompressor"),
                                         ("mxfp4", "autoawq"), ("fp8-e4m3-channel", "llmcompressor")])
def test_awq_float_format_objective_beats_rtn_at_its_scales(trained, fmt, profile):
    """AWQ's objective recomputed here: each mapped linear's output MSE on its FP inputs with the
    equivalent weight Q(W·s)/s (s read back from the folded norm) vs RTN's Q(W), both on the format.
    Without clipping the recomputed numbers equal the search's own (``awq_loss``, ``awq_rtn_loss``), so
    the search rounded on the format; the final weights Q(W·s) lie on the format's grid."""
    model, calib = trained
    f = FORMATS[fmt]
    x = _inputs(model, calib)
    blocks = decoder_layers(model)
    fp = {(i, lin): (b.get_submodule(lin).weight.detach().clone(), b.get_submodule(norm).weight.detach().clone())
          for i, b in enumerate(blocks) for norm, lin in MAPS}
    spec = QuantSpec("awq", format=fmt, options=(("clip", False), ("profile", profile)))
    with quantized(model, spec, calib) as res:
        got = {(i, lin): (b.get_submodule(lin).weight.detach().clone(), b.get_submodule(norm).weight.detach().clone())
               for i, b in enumerate(blocks) for norm, lin in MAPS}
        prefix = {id(b): n for n, b in model.named_modules()}
        info = {(i, lin): res.layers[f"{prefix[id(b)]}.{lin}"] for i, b in enumerate(blocks) for _, lin in MAPS}
    for key, (w, norm) in fp.items():
        wq, norm_q = got[key]
        s = norm.double() / norm_q.double()
        awq = _out_mse(x[key], wq.double() / s, w)
        rtn = _out_mse(x[key], fake_quantize_format(w, f)[0], w)
        assert awq <= rtn * (1 + 1e-9), (key, awq, rtn)
        assert awq == pytest.approx(info[key]["awq_loss"], rel=1e-3)
        assert rtn == pytest.approx(info[key]["awq_rtn_loss"], rel=1e-3)
        if f.scale == "e4m3":  # NVFP4: per block the largest magnitude is 6 · eff, the others e2m1 values
            blk = wq.reshape(-1, 16)
            e = blk / blk.abs().amax(1, keepdim=True).clamp_min(1e-30) * 6
            assert torch.allclose(e, round_float(e, ELEMENTS["e2m1"]), atol=1e-5), key
        else:  # on the grid: a fixed point of the format's RTN
            assert torch.allclose(fake_quantize_format(wq, f)[0], wq, rtol=1e-6, atol=0), key


def test_clip_search_on_nvfp4_never_increases_output_error():
    """Each 16-wide block is clipped where that lowers its output error, rounded as NVFP4 with the whole
    weight's tensor scale (checked by hand here from the format's own parameters)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 64, generator=g)
    w[0, 3] = 6.0  # an outlier on a nearly silent input: clipping it makes its block's grid finer
    x = torch.randn(300, 64, generator=g)
    x[:, 3] *= 0.01
    f = FORMATS["nvfp4"]
    mx = search_clip(w, x, QuantSpec("awq", format="nvfp4"), AWQOptions())
    ts = f.tensor_scale(w)

    def q(block):
        scale, zero = f.params(block, ts)
        return f.qdq(block, scale, zero, ts)
    for gi in range(4):
        wg, xg = w[:, 16 * gi:16 * gi + 16], x[:, 16 * gi:16 * gi + 16]
        none = (q(wg) @ xg.T - wg @ xg.T).pow(2).mean(1)
        lim = mx[:, gi:gi + 1]
        best = (q(torch.clamp(wg, -lim, lim)) @ xg.T - wg @ xg.T).pow(2).mean(1)
        assert torch.all(best <= none + 1e-9)
    assert mx[0, 0] < 6.0


def test_awq_integer_formats_keep_their_numbers(trained):
    """A named integer format is the plain integer variant: the same AWQ weights, bit for bit."""
    model, calib = trained
    with quantized(model, QuantSpec("awq", 4, 16, sym=False), calib):
        plain = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
    with quantized(model, QuantSpec("awq", format="int4-g16-asym"), calib):
        named = {n: m.weight.detach().clone() for n, m in select_linears(model).items()}
    assert all(torch.equal(plain[n], named[n]) for n in plain)


@pytest.mark.parametrize("kw,match", [
    (dict(format="w8a8-fp8"), r"awq-fp8-e4m3-channel\+a-fp8-e4m3-token: AWQ cannot search its scales under "
                              r"activation quantization"),
    (dict(format="nvfp4", act="int8-token"), "activation quantization"),
    (dict(format="fp4-e2m1-g16-e4m3-sr"), "deterministic rounding"),
])
def test_what_awq_cannot_use_is_refused_when_the_spec_is_made(kw, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec("awq", **kw)
    QuantSpec("rtn", **kw)  # other methods take them


def test_awq_nvfp4_streamed_equals_in_memory(tiny_run):
    import qrobust
    from qrobust.evaluate import evaluate_loss
    from qrobust.quant.pipelines.streamed import streamed_losses
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    blocks, calib = qrobust.eval_blocks(ck, n_blocks=3), qrobust.calib_blocks(ck, n_samples=4)
    spec = QuantSpec("awq", format="nvfp4")
    res = streamed_losses(ck, spec, blocks, batch_size=3, calibration=calib)
    model = load_checkpoint(ck)
    with quantized(model, spec, calib) as mem:
        q = evaluate_loss(model, blocks, 3)
    assert res.q.block_sums == q.block_sums and res.q.loss != res.fp.loss
    assert {n: v["rel_err"] for n, v in res.layers.items()} == {n: v["rel_err"] for n, v in mem.layers.items()}
