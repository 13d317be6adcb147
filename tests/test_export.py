"""Export to compressed-tensors pack-quantized: the files, unpacked by hand here, hold exactly the
integers and scales of qrobust's grid; transformers reloads them to the same loss; and what the format
cannot hold is refused with one line before anything is written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("compressed_tensors", reason="export needs compressed-tensors (pip install 'qrobust[export]')")

import qrobust  # noqa: E402
from qrobust.errors import QrobustError  # noqa: E402
from qrobust.quant.formats.grid import fake_quantize  # noqa: E402


def _ckpt(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "main" / "step-0000012"


def _unpack(packed: torch.Tensor, bits: int, cols: int) -> np.ndarray:
    """The format's packing, written from its description: signed codes offset by 2^(bits−1), laid
    end to end as one little-endian bit stream per row, 32 bits per int32 word."""
    words = packed.numpy().view(np.uint32)
    stream = ((words[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).reshape(words.shape[0], -1)
    codes = (stream[:, : cols * bits].reshape(-1, cols, bits).astype(np.int64) << np.arange(bits)).sum(-1)
    return codes - 2 ** (bits - 1)


@pytest.mark.parametrize("bits", [3, 4])
def test_rtn_export_holds_our_grid_bit_for_bit(tiny_run, tmp_path, bits):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    ck = _ckpt(tiny_run)
    rep = qrobust.export(ck, tmp_path / "x", bits=bits, group_size=16, verify_blocks=4)
    assert rep["loss_reloaded"] == rep["loss_fake_quant"]  # fp32: the reloaded model is the evaluated one
    orig = AutoModelForCausalLM.from_pretrained(ck)
    f = safe_open(str(tmp_path / "x" / "model.safetensors"), "pt")
    quantized = [k[: -len(".weight_packed")] for k in f.keys() if k.endswith(".weight_packed")]
    assert len(quantized) == 8 and not any("embed" in k for k in quantized)  # the head stays in full precision
    for name in quantized:
        w = orig.get_submodule(name).weight.detach()
        codes = _unpack(f.get_tensor(name + ".weight_packed"), bits, w.shape[1])
        scale = f.get_tensor(name + ".weight_scale").numpy()
        assert scale.shape == (w.shape[0], w.shape[1] // 16)
        assert codes.min() >= -2 ** (bits - 1) and codes.max() <= 2 ** (bits - 1) - 1
        ref = fake_quantize(w, bits, 16, True).numpy()
        np.testing.assert_allclose(codes * np.repeat(scale, 16, axis=1), ref, rtol=0, atol=1e-7)


def test_gptq_export_reloads_to_the_same_loss(tiny_run, tmp_path):
    ck = _ckpt(tiny_run)
    calib = qrobust.calib_blocks(ck, n_samples=8)
    rep = qrobust.export(ck, tmp_path / "g", method="gptq", bits=3, group_size=16, calibration=calib, verify_blocks=4)
    assert rep["loss_diff"] == 0.0 and rep["label"] == "gptq-w3g16"
    # act-order with static groups keeps whole contiguous groups: exportable, and exact too
    rep = qrobust.export(ck, tmp_path / "s", method="gptq", bits=4, group_size=16, calibration=calib,
                         verify_blocks=4, act_order=True, static_groups=True)
    assert rep["loss_diff"] == 0.0
    with pytest.raises(QrobustError, match="act-order and dynamic groups"):
        qrobust.export(ck, tmp_path / "d", method="gptq", bits=4, group_size=16, calibration=calib, act_order=True)
    assert not (tmp_path / "d").exists()  # refused before writing


def test_what_the_format_cannot_hold_is_one_clear_line(tiny_run, tmp_path):
    ck = _ckpt(tiny_run)
    with pytest.raises(QrobustError, match="asymmetric grid is not supported"):
        qrobust.export(ck, tmp_path / "a", bits=4, group_size=16, sym=False)
    with pytest.raises(QrobustError, match="not a multiple of the group size 24"):
        qrobust.export(ck, tmp_path / "b", bits=4, group_size=24)
    with pytest.raises(QrobustError, match="does not record its quantization grid"):
        qrobust.export(ck, tmp_path / "c", method="awq", bits=4, group_size=16, calibration=qrobust.calib_blocks(ck, 4))
    assert not any((tmp_path / n).exists() for n in "abc")
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "export", str(ck), "--bits", "4", "--asym",
                        "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "asymmetric" in r.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "export", str(ck), "--bits", "4", "--group-size", "16",
                        "--out", str(tmp_path / "busy")], capture_output=True, text=True)
    assert r.returncode == 2 and "already holds other files" in r.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_missing_package_is_one_line(monkeypatch, tmp_path, tiny_run):
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    with pytest.raises(QrobustError, match=r"pip install 'qrobust\[export\]'"):
        qrobust.export(_ckpt(tiny_run), tmp_path / "x", bits=4, group_size=16)


def test_cli_export_with_verify(tiny_run, tmp_path):
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "export", str(_ckpt(tiny_run)), "--bits", "4",
                        "--group-size", "16", "--out", str(tmp_path / "e"), "--verify", "4"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "rtn-w4g16: exported as compressed-tensors" in r.stdout and "difference +0.00e+00" in r.stdout
    assert (tmp_path / "e" / "qrobust_export.json").is_file() and (tmp_path / "e" / "tokenizer.json").is_file()
