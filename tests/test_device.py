"""Device and dtype selection. Every path runs here on the CPU: `auto` resolves to what the machine has,
an absent GPU is one clear line, and a bf16 model goes through the same loading, quantizing (fp32
Hessians and grids) and evaluation code a GPU run uses."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import qrobust
from qrobust.errors import CheckpointError, ConfigError
from qrobust.models import load_checkpoint, resolve_device, resolve_dtype
from qrobust.sweeps import Store, sweep

NO_GPU = not torch.cuda.is_available()


def test_resolve_device_and_dtype():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None).type == resolve_device("auto").type
    assert resolve_device("CPU") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(CheckpointError, match="device"):
            resolve_device(bad)
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(CheckpointError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")


@pytest.mark.skipif(not NO_GPU, reason="checks the message for a machine without a GPU")
def test_asking_for_an_absent_gpu_is_one_line(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda:0")
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "eval", str(ck), "--device", "cuda"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no CUDA GPU" in r.stderr
    with pytest.raises(CheckpointError, match="no CUDA GPU"):
        sweep({"trajectory": str(tiny_run), "out": str(tmp_path / "r"), "device": "cuda"}, progress=False)
    assert not (tmp_path / "r" / "records").exists() or not any((tmp_path / "r" / "records").iterdir())


def test_bf16_sweep_keys_its_own_records_and_stays_close_to_fp32(tiny_run, tmp_path):
    base = {"trajectory": f"{tiny_run}?run=decay8", "out": str(tmp_path / "r"), "methods": ["rtn", "gptq"],
            "bits": [4], "group_sizes": [16], "eval": {"n_blocks": 4}, "calibration": {"n_samples": 8},
            "device": "cpu"}
    sweep(base, progress=False)
    s = sweep({**base, "dtype": "bfloat16"}, progress=False)
    assert s.records_written == 2 and s.records_skipped == 0  # bf16 numbers never overwrite fp32 ones
    recs = Store(tmp_path / "r", create=False).records()
    # how a record was run (dtype, device) and what keys it (checkpoint_id) are stored fields without a typed one
    stored = {r.key: r.to_dict() for r in recs}
    by = {(stored[r.key]["dtype"], r.variant.method): r for r in recs}
    assert set(by) == {(d, m) for d in ("float32", "bfloat16") for m in ("rtn", "gptq")}
    assert all(stored[r.key]["device"] == "cpu" for r in recs)
    for m in ("rtn", "gptq"):
        fp32, bf16 = by[("float32", m)].metrics, by[("bfloat16", m)].metrics
        assert bf16.loss_fp == pytest.approx(fp32.loss_fp, rel=0.02)
        assert bf16.loss_q == pytest.approx(fp32.loss_q, rel=0.02)
    assert stored[by[("bfloat16", "gptq")].key]["checkpoint_id"]["dtype"] == "bfloat16"
    assert "dtype" not in stored[by[("float32", "gptq")].key]["checkpoint_id"]  # fp32 keys are what they always were


def test_bf16_gptq_uses_fp32_hessians_and_puts_bf16_weights_on_the_grid(tiny_run):
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    model = load_checkpoint(ck, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    from qrobust.quant.pipelines.in_memory import quantize_inplace
    from qrobust.quant.export import _verify_codes
    seen = []
    import qrobust.quant.methods.gptq as gptq_mod
    real = gptq_mod.gptq_quantize

    def spy(W, H, *a, **k):
        seen.append((W.dtype, H.dtype))
        return real(W, H, *a, **k)

    gptq_mod.gptq_quantize = spy
    try:
        res = quantize_inplace(model, qrobust.QuantSpec(method="gptq", bits=4, group_size=16),
                               qrobust.calib_blocks(ck, n_samples=8))
    finally:
        gptq_mod.gptq_quantize = real
    assert seen and all(h == torch.float32 for _, h in seen)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    _verify_codes(model, res.grids)  # bf16 weights sit on the fp32 grid up to bf16 rounding


def test_geometry_needs_float32(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="needs float32 models"):
        sweep({"trajectory": str(tiny_run), "out": str(tmp_path / "r"), "dtype": "bfloat16",
               "geometry": {"n_blocks": 1}}, progress=False)
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        from qrobust.api import sweep_config
        sweep_config({"trajectory": str(tiny_run), "device": "tpu"})
