"""Export of float formats to compressed-tensors (FP8 float-quantized, nvfp4-pack-quantized, MX): the files,
decoded here from the formats' descriptions (not with qrobust's code), hold exactly the weights qrobust
evaluated; compressed-tensors' own decompressors and transformers' reload agree; what no
compressed-tensors format holds is refused with one line before anything is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("compressed_tensors", reason="export needs compressed-tensors (pip install 'qrobust[export]')")

import qrobust  # noqa: E402
from qrobust.errors import QrobustError, QrobustWarning  # noqa: E402
from qrobust.quant import QuantSpec, quantized  # noqa: E402

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # FP4 E2M1 magnitudes, by their 3-bit code
E2M3 = torch.tensor([m / 8 for m in range(8)] + [2.0 ** e * (1 + m / 8) for e in range(3) for m in range(8)])


def _ckpt(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "main" / "step-0000012"


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, cols/2] -> 4-bit codes [rows, cols]: the low nibble holds the even column."""
    p = packed.to(torch.int64)
    return torch.stack([p & 0xF, p >> 4], dim=-1).reshape(p.shape[0], -1)


def _fp4(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 from its 4-bit code: bit 3 the sign, bits 0–2 the magnitude's index."""
    return torch.where(codes & 8 > 0, -1.0, 1.0) * E2M1[codes & 7]


def _fp6(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """E2M3 from 6-bit codes, four per three bytes, little-endian bit stream: bit 5 the sign."""
    b = packed.to(torch.int64).reshape(packed.shape[0], -1, 3)
    word = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16
    codes = torch.stack([(word >> (6 * k)) & 63 for k in range(4)], dim=-1).reshape(packed.shape[0], cols)
    return torch.where(codes & 32 > 0, -1.0, 1.0) * E2M3[codes & 31]


def _decode(f, name: str, fmt: str, cols: int) -> torch.Tensor:
    """The dequantized weight a file holds, from the format's description alone (fp32 math)."""
    t = {k.split(".")[-1]: f.get_tensor(k) for k in f.keys() if k.startswith(name + ".")}
    if fmt == "nvfp4":
        assert t["weight_packed"].dtype == torch.uint8 and t["weight_scale"].dtype == torch.float8_e4m3fn
        assert t["weight_scale"].shape[1] == cols // 16 and t["weight_global_scale"].dtype == torch.float32
        step = t["weight_scale"].float() / t["weight_global_scale"]
        return _fp4(_nibbles(t["weight_packed"])) * step.repeat_interleave(16, dim=1)
    if fmt.startswith("fp8"):
        assert t["weight"].dtype == torch.float8_e4m3fn and t["weight_scale"].dtype == torch.float32
        return t["weight"].float() * t["weight_scale"].repeat_interleave(cols // t["weight_scale"].shape[1], dim=1)
    assert t["weight_scale"].dtype == torch.uint8 and t["weight_scale"].shape[1] == cols // 32  # E8M0 exponents
    exp = t["weight_scale"].to(torch.int32) - 127
    step = torch.ldexp(torch.ones(exp.shape), exp).repeat_interleave(32, dim=1)
    if fmt == "mxfp4":
        return _fp4(_nibbles(t["weight_packed"])) * step
    if fmt == "mxfp6-e2m3":
        return _fp6(t["weight_packed"], cols) * step
    return t["weight"].float() * step  # mxfp8-e4m3


def _ours(ck: Path, spec: QuantSpec, calib) -> tuple[dict[str, torch.Tensor], float, float]:
    """Our fake-quantized weights, our model's loss on the export's check blocks, and the loss with the
    quantized weights rounded to bf16 (what compressed-tensors' NVFP4 decompression yields)."""
    model = qrobust.load_checkpoint(ck)
    blocks = qrobust.eval_blocks(ck, n_blocks=4)
    with quantized(model, spec, calib) as res:
        weights = {n: model.get_submodule(n).weight.detach().clone() for n in res.grids}
        loss = qrobust.evaluate_loss(model, blocks).loss
        with torch.no_grad():
            for n in res.grids:
                model.get_submodule(n).weight.copy_(weights[n].bfloat16().float())
        loss_bf16 = qrobust.evaluate_loss(model, blocks).loss
    return weights, loss, loss_bf16


CASES = [("nvfp4", "rtn"), ("nvfp4", "gptq"), ("fp8-e4m3-channel", "rtn"), ("fp8-e4m3-channel", "gptq"),
         ("fp8-e4m3-g16", "rtn"), ("mxfp4", "rtn"), ("mxfp6-e2m3", "gptq"), ("mxfp8-e4m3", "rtn")]


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")
@pytest.mark.parametrize("fmt,method", CASES)
def test_float_export_holds_our_weights_and_reloads(tiny_run, tmp_path, fmt, method):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    ck = _ckpt(tiny_run)
    calib = qrobust.calib_blocks(ck, n_samples=8) if method == "gptq" else None
    rep = qrobust.export(ck, tmp_path / "x", format=fmt, method=method, calibration=calib, verify_blocks=4)
    ours, loss, loss_bf16 = _ours(ck, QuantSpec(method, format=fmt), calib)
    assert rep["label"] == f"{method}-{fmt}" and rep["loss_fake_quant"] == loss
    f = safe_open(str(tmp_path / "x" / "model.safetensors"), "pt")
    config = QuantizationConfig.model_validate(
        json.loads((tmp_path / "x" / "config.json").read_text())["quantization_config"])
    scheme = config.config_groups["group_0"]
    assert sorted(scheme.targets) == sorted(ours) and len(ours) == 8  # every linear but the head
    compressor = BaseCompressor.get_value_from_registry(config.format)
    bf16 = fmt == "nvfp4"  # compressed-tensors decompresses NVFP4 through bf16 (an fp32 global scale)
    for name, w in ours.items():
        assert torch.equal(_decode(f, name, fmt, w.shape[1]), w), name  # the file holds our weights, bit for bit
        state = {k.split(".")[-1]: f.get_tensor(k) for k in f.keys() if k.startswith(name + ".")}
        theirs = compressor.decompress(state, scheme)["weight"]
        assert torch.equal(theirs.float(), w.bfloat16().float() if bf16 else w), name
    # FP8 loads as is (decompressed at the first forward); the bf16-decompressing formats need dequantize=True
    # in fp32 (else that forward mixes dtypes)
    fp8 = fmt.startswith("fp8")
    kw = {} if fp8 else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "x", **kw)
    with torch.no_grad():
        reloaded(torch.zeros(1, 4, dtype=torch.long))
    for name, w in ours.items():
        assert torch.equal(reloaded.get_submodule(name).weight, w.bfloat16().float() if bf16 else w), name
    assert rep["loss_reloaded"] == (loss_bf16 if bf16 else loss)
    assert (rep["loss_diff"] == 0.0) == (not bf16)


def test_nvfp4_adversarial_blocks_round_trip(tiny_run, tmp_path):
    """A layer whose max is 448·6 (tensor scale 1, so block scale = amax / 6 exactly): a zero block, a block
    whose E4M3 scale is subnormal, one whose scale underflows, exact E2M1 ties, the E4M3 maximum. The
    file's nibbles and scales decode to our weights and to the values rounded by hand (ties to even)."""
    from safetensors import safe_open
    src = _ckpt(tiny_run)
    ck = tmp_path / "adv"
    shutil.copytree(src, ck, ignore=shutil.ignore_patterns("optimizer*"))
    model = qrobust.load_checkpoint(src)
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h"
    ties = [6.0, -6.0, 5.0, -5.0, 2.5, -2.5, 0.25, -0.25, 0.75, 1.25, 1.75, 3.5, -3.5, 0.0, -0.0, 4.0]
    with torch.no_grad():
        w = model.get_submodule(name).weight
        w[0, :16] = 0.0
        w[1, :16] = 0.06 * torch.linspace(-1, 1, 16)  # scale 0.01: an E4M3 subnormal (5 · 2^-9)
        w[2, :16] = torch.tensor(ties)  # scale 1: the values are the elements, ties included
        w[3, :16] = 2688.0  # the tensor's max: tensor scale 448 · 6 / 2688 = 1, block scale 448 (E4M3 max)
        w[4, :16] = 1e-7  # scale underflows E4M3 to 0: compressed-tensors then uses E4M3's eps, 0.125
    model.save_pretrained(ck)
    qrobust.export(ck, tmp_path / "x", format="nvfp4")
    ours, _, _ = _ours(ck, QuantSpec("rtn", format="nvfp4"), None)
    f = safe_open(str(tmp_path / "x" / "model.safetensors"), "pt")
    back = _decode(f, name, "nvfp4", 32)
    assert torch.equal(back, ours[name])
    assert float(f.get_tensor(name + ".weight_global_scale")) == 1.0
    assert f.get_tensor(name + ".weight_scale")[:5, 0].float().tolist() == [0.125, 5 * 2 ** -9, 1.0, 448.0, 0.125]
    assert back[2, :16].tolist() == [6, -6, 4, -4, 2, -2, 0, 0, 1, 1, 2, 4, -4, 0, 0, 4]
    assert (back[0, :16] == 0).all() and (back[4, :16] == 0).all() and (back[3, :16] == 2688).all()


def test_what_no_compressed_tensors_format_holds_is_one_line(tiny_run, tmp_path):
    ck = _ckpt(tiny_run)
    for fmt, msg in [("mxfp6-e3m2", "no compressed-tensors weight format"),
                     ("fp8-e5m2-channel", "no compressed-tensors weight format"),
                     ("fp4-e2m1-g16-fp16", "no compressed-tensors weight format"),
                     ("fp4-e2m1-g32-e4m3", "no compressed-tensors weight format"),  # NVFP4 scales need blocks of 16
                     ("w8a8-fp8", "not act=fp8-e4m3-token"),
                     ("nvfp4+kv-fp8-e4m3-head", "not kv=fp8-e4m3-head"),
                     ("fp8-e4m3-g24", "block size 24 of fp8-e4m3-g24 does not divide in_features=32")]:
        with pytest.raises(QrobustError, match=msg) as e:
            qrobust.export(ck, tmp_path / "o", format=fmt)
        assert "\n" not in str(e.value)
    with pytest.raises(QrobustError, match="does not record its quantization grid"):
        qrobust.export(ck, tmp_path / "o", format="nvfp4", method="awq", calibration=qrobust.calib_blocks(ck, 4))
    assert not (tmp_path / "o").exists()


def test_cli_export_format(tiny_run, tmp_path, capsys):
    from qrobust.cli import main
    ck = str(_ckpt(tiny_run))
    assert main(["export", ck, "--format", "nvfp4", "--out", str(tmp_path / "n"), "--verify", "2"]) == 0
    out = capsys.readouterr().out
    assert "rtn-nvfp4: exported as compressed-tensors/nvfp4-pack-quantized" in out and "difference" in out
    assert "decompresses this format through bfloat16" in out
    for args, msg in [(("--format", "nvfp4", "--bits", "4", "--asym"), "drop --bits, --asym"),
                      ((), "export needs --bits"), (("--format", "mxfp6-e3m2"), "no compressed-tensors weight format")]:
        assert main(["export", ck, *args, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")
def test_gptq_nvfp4_stacked_qkv_keeps_each_layers_global_scale(tmp_path):
    """Llama's q/k/v share one GPTQ problem (stacked rows) but each keeps its own NVFP4 tensor scale,
    448 · 6 / amax of its own weight (compressed-tensors' ``generate_gparam``): the export writes each, and the file
    and transformers' reload hold our weights. vLLM fuses q/k/v and gate/up under one global scale, so the
    export says, in one warning line and in qrobust_export.json, that those groups' scales differ."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from qrobust.models import build_model
    from qrobust.quant.export import export_compressed_tensors
    from qrobust.quant.pipelines.in_memory import quantize_inplace
    model = build_model("llama", "micro", vocab_size=64, max_positions=32, seed=0)
    attn = "model.layers.0.self_attn."
    from compressed_tensors.quantization.utils import generate_gparam
    want = {}
    for p in ("q_proj", "k_proj", "v_proj"):  # the oracle: compressed-tensors' own global scale of each weight
        w = model.get_submodule(attn + p).weight.detach()
        want[p] = float(generate_gparam(w.min(), w.max()))
    calib = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(0))
    res = quantize_inplace(model, QuantSpec("gptq", format="nvfp4", options=(("true_sequential", False),)), calib)
    ours = {n: model.get_submodule(n).weight.detach().clone() for n in res.grids}
    with pytest.warns(QrobustWarning, match="vLLM takes one global scale per fused linear") as rec:
        export_compressed_tensors(model, res, tmp_path / "x")
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    flagged = json.loads((tmp_path / "x" / "qrobust_export.json").read_text())["vllm_unshared_global_scales"]
    assert flagged == [f"model.layers.{i}.{p}" for i in (0, 1) for p in ("mlp.gate_proj", "self_attn.q_proj")]
    f = safe_open(str(tmp_path / "x" / "model.safetensors"), "pt")
    scales = {p: float(f.get_tensor(attn + p + ".weight_global_scale")) for p in want}
    assert scales == want and len(set(scales.values())) == 3
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "x",
                                                    quantization_config=CompressedTensorsConfig(dequantize=True))
    for name, w in ours.items():
        assert torch.equal(_decode(f, name, "nvfp4", w.shape[1]), w), name
        assert torch.equal(reloaded.get_submodule(name).weight, w.bfloat16().float()), name


def test_bf16_nvfp4_and_integer_formats_by_name(tiny_run, tmp_path):
    """In bf16 (NVFP4's deployment dtype) compressed-tensors' bf16 decompression loses nothing: the reload
    is the evaluated model. An integer format named by --format is the plain integer export, byte for byte."""
    from safetensors.torch import load_file
    ck = _ckpt(tiny_run)
    rep = qrobust.export(ck, tmp_path / "b", format="nvfp4", dtype="bfloat16", verify_blocks=4)
    assert rep["loss_diff"] == 0.0 and rep["loss_reloaded"] == rep["loss_fake_quant"]
    qrobust.export(ck, tmp_path / "i", format="int4-g16")
    qrobust.export(ck, tmp_path / "j", bits=4, group_size=16)
    a, b = load_file(str(tmp_path / "i" / "model.safetensors")), load_file(str(tmp_path / "j" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "i" / "config.json").read_text() == (tmp_path / "j" / "config.json").read_text()
