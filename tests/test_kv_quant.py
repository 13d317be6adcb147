"""KV-cache quantization: the attention modules are found by their cache argument (GPT-NeoX's fused qkv
and Llama's k_proj/v_proj alike); what the cache stores is the post-RoPE keys and values fake-quantized
per token and head (dynamic) or per head / per tensor with calibrated scales, equal to
compressed-tensors' attention-head quantizer; generation with a real cache still works; a model with
no such attention is refused naming its type; the streamed numbers equal the in-memory ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qrobust.errors import ConfigError
from qrobust.evaluate import evaluate_loss
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QuantSpec, quantized
from qrobust.quant.formats.activations import act_format, fake_quantize_act, observe, static_params
from qrobust.quant.pipelines.kv_cache import attention_modules
from qrobust.quant.pipelines.streamed import stream_checkpoint


def _model(arch: str):
    return build_model(arch, "micro", vocab_size=96, max_positions=64, seed=3).eval()


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 96, (n, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,inner", [("gpt_neox", "attention"), ("llama", "self_attn")])
def test_attention_modules_are_the_innermost_with_a_cache_argument(arch, inner):
    model = _model(arch)
    found = attention_modules(model)
    assert len(found) == model.config.num_hidden_layers
    assert all(n.endswith(f".{inner}") for n in found)


@pytest.mark.parametrize("kind,name", [("int", "int8-head"), ("float", "fp8-e4m3-head")])
def test_per_head_equals_compressed_tensors(kind, name):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    g = torch.Generator().manual_seed(0)
    kv = torch.randn(2, 4, 7, 16, generator=g) * torch.tensor([0.01, 1, 10, 300]).view(1, 4, 1, 1)
    rows = kv.transpose(0, 1).reshape(4, -1)
    args = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="attn_head")
    s, z = calculate_qparams(rows.amin(1).view(4, 1, 1), rows.amax(1).view(4, 1, 1), args)
    fmt = act_format(name, "kv")
    assert torch.equal(fake_quantize_act(kv, fmt, static_params(fmt, observe(kv, fmt))), fake_quantize(kv, s, z, args))


def _cache(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch, use_cache=True)
    return [(layer.keys.clone(), layer.values.clone()) for layer in out.past_key_values.layers]


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("kv", ["fp8-e4m3-token", "int8-head", "fp8-e4m3-tensor"])
def test_the_cache_holds_the_quantized_post_rope_keys_and_values(arch, kv):
    model, calib, batch = _model(arch), _tokens(10, 1), _tokens(2, 2)
    fmt = act_format(kv, "kv")
    with quantized(model, QuantSpec(method="rtn", bits=8, group_size=-1)):
        ranges = [[None, None] for _ in range(model.config.num_hidden_layers)]
        for b in torch.split(calib, 8):  # the calibration pass, independently, from the real cache
            for i, (k, v) in enumerate(_cache(model, b)):
                for j, t in enumerate((k, v)):
                    r = observe(t, fmt) if fmt.block_size != -1 else None
                    ranges[i][j] = r if ranges[i][j] is None else torch.stack(
                        [torch.minimum(ranges[i][j][:, 0], r[:, 0]), torch.maximum(ranges[i][j][:, 1], r[:, 1])], 1)
    with quantized(model, QuantSpec(method="rtn", bits=8, group_size=-1, kv=kv), calib):
        raw, handles = [], []
        for mod, arg in attention_modules(model).values():  # after the stand-in: sees what it is handed
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, kw, arg=arg: (a, {**kw, arg: _Recorder(kw[arg], raw)}), with_kwargs=True))
        q_kv = _cache(model, batch)
        for h in handles:
            h.remove()
    assert len(raw) == len(q_kv) == model.config.num_hidden_layers
    for i, ((k, v), (qk, qv)) in enumerate(zip(raw, q_kv)):
        for j, (t, qt) in enumerate(((k, qk), (v, qv))):
            params = static_params(fmt, ranges[i][j]) if fmt.block_size != -1 else None
            assert torch.equal(qt, fake_quantize_act(t, fmt, params)), (i, j)
            assert not torch.equal(qt, t)


class _Recorder:
    """Wraps the cache an attention module is handed: records the keys and values it writes."""

    def __init__(self, inner, raw):
        self.inner, self.raw = inner, raw

    def update(self, k, v, *args, **kwargs):
        self.raw.append((k.clone(), v.clone()))
        return self.inner.update(k, v, *args, **kwargs)


def test_a_model_without_cache_attention_is_refused_by_type():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x)
    with pytest.raises(ConfigError, match="model type 'Plain' has no attention module taking a KV cache"):
        with quantized(Plain(), QuantSpec(method="rtn", bits=8, group_size=-1, kv="fp8-e4m3-token")):
            pass


def test_kv_streamed_equals_in_memory(tmp_path):
    specs = [QuantSpec(method="rtn", format="int8-channel+kv-fp8-e4m3-head"),
             QuantSpec(method="rtn", format="w8a8-int8", kv="int8-token"),
             QuantSpec(method="rtn", format="int8-channel+a-fp8-e4m3-tensor+kv-int8-tensor", include=("*.0.*",))]
    blocks, calib = _tokens(5, 0), _tokens(7, 1)
    for arch in ("gpt_neox", "llama"):
        _model(arch).save_pretrained(tmp_path / arch)
        run = stream_checkpoint(tmp_path / arch, specs, blocks, 2, {s: calib for s in specs})
        model = load_checkpoint(tmp_path / arch)
        assert run.fp.block_sums == evaluate_loss(model, blocks, 2).block_sums
        for v in run.variants:
            with quantized(model, v.spec, calib):
                q = evaluate_loss(model, blocks, 2)
            assert v.q.block_sums == q.block_sums, (arch, v.spec.label)
            assert v.q.block_sums != run.fp.block_sums
