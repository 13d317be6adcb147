"""Model FLOPs per token (training/flops.py) against a hand-derived closed form and against torch's own FLOP
counter on a real forward + backward; peak FLOP/s lookup by device name."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from qrobust.models import build_model, model_config
from qrobust.training.flops import (PEAK_TFLOPS, flops_per_token, known_device, meta_model, mfu, param_counts,
                                    peak_flops)

V, T = 300, 64  # vocab, seq_len
H, L, I = 32, 2, 128  # the micro preset: hidden, layers, intermediate


def _flops(arch: str, preset: str = "micro", vocab: int = V, seq: int = T):
    cls, cfg = model_config(arch, preset, vocab, seq)
    model = meta_model(cls, cfg)
    return flops_per_token(model, cfg, seq), param_counts(model)


def test_gpt_neox_closed_form():
    f, p = _flops("gpt_neox")
    per_layer = 3 * H * H + H * H + 2 * H * I  # fused QKV, attention output, MLP in + out
    assert f.layer_matmul_params == L * per_layer == 24576
    assert f.head_params == H * V
    assert f.attention == 2 * 2 * L * T * H
    assert f.forward == 2 * (L * per_layer + H * V) + 4 * L * T * H
    # PaLM: 6N + 12·L·H·Q·T (H heads × Q head dim = hidden)
    assert f.training == 6 * (L * per_layer + H * V) + 12 * L * H * T
    # params: embed_in, per layer (2 LayerNorms, QKV, dense, MLP with biases), final LayerNorm, embed_out
    layer_params = 4 * H + (3 * H * H + 3 * H) + (H * H + H) + (H * I + I) + (I * H + H)
    assert p.total == V * H + L * layer_params + 2 * H + H * V == 44672
    assert p.embedding == 2 * V * H
    assert p.non_embedding == L * layer_params + 2 * H


def test_llama_closed_form():
    f, _ = _flops("llama")
    assert f.layer_matmul_params == L * (4 * H * H + 3 * H * I)  # q, k, v, o; gate, up, down
    assert f.training == 6 * (L * (4 * H * H + 3 * H * I) + H * V) + 12 * L * H * T


def test_pythia_160m_parameter_count():
    """The Pythia suite's published size: 162,322,944 parameters, 85,056,000 non-embedding (vocab 50304)."""
    _, p = _flops("gpt_neox", "pythia-160m", 50304, 2048)
    assert (p.total, p.non_embedding) == (162_322_944, 85_056_000)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_matches_torch_flop_counter(arch):
    """torch.utils.flop_counter on one forward + backward (eager attention, whose matmuls it counts)."""
    batch = 2
    model = build_model(arch, "micro", V, T)
    model.set_attn_implementation("eager")
    model.train()
    x = torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=x, labels=x).loss.backward()
    f, _ = _flops(arch)
    measured = counter.get_total_flops()
    assert measured == pytest.approx(f.training * batch * T, rel=0.02)


@pytest.mark.parametrize("name,row", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA A10G", "A10G"), ("NVIDIA A10", "A10"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("Tesla V100-SXM2-32GB", "V100 SXM2"),
    ("Tesla V100-PCIE-16GB", "V100 PCIe"), ("AMD Instinct MI300X", "MI300X"), ("Tesla T4", "T4"),
])
def test_device_names(name, row):
    assert known_device(name) == row


def test_peak_flops():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-40GB", "fp32") == pytest.approx(19.5e12)
    assert peak_flops("NVIDIA A100-SXM4-40GB", "tf32") == pytest.approx(156e12)
    assert peak_flops("Tesla V100-SXM2-16GB", "bf16-mixed") is None  # no bf16 units
    assert peak_flops("cpu", "fp32") is None
    assert peak_flops("Some Future GPU", "bf16-mixed") is None
    assert peak_flops("cpu", "fp32", override_tflops=1.5) == pytest.approx(1.5e12)
    for rates in PEAK_TFLOPS.values():  # dense tensor rates are never below the plain fp32 rate
        assert all(v >= rates["fp32"] for v in rates.values())


def test_mfu():
    f, _ = _flops("gpt_neox")
    # 1e6 tokens/s on two devices of 100 TFLOP/s: utilisation = 1e6 × training FLOPs / 2e14
    assert mfu(1e6, f, 100e12, world_size=2) == pytest.approx(1e6 * f.training / 2e14)
    assert mfu(1e6, f, None) is None
