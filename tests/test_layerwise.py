"""Layer-streamed evaluation gives the in-memory numbers: FP and RTN losses, block by block, for
GPT-NeoX and Llama (tied and untied heads), in fp32 and bf16; and refuses what it cannot stream."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qrobust.errors import CheckpointError, QrobustError
from qrobust.evaluate import evaluate_loss
from qrobust.quant.pipelines.streamed import streamed_losses
from qrobust.models import build_model, load_checkpoint
from qrobust.quant import QuantSpec, quantized


def _in_memory(path: Path, spec: QuantSpec, blocks: torch.Tensor, batch_size: int, dtype: str = "float32"):
    model = load_checkpoint(path, dtype=dtype)
    fp = evaluate_loss(model, blocks, batch_size)
    with quantized(model, spec):
        q = evaluate_loss(model, blocks, batch_size)
    return fp, q


def _llama(tmp_path: Path, tied: bool) -> Path:
    model = build_model("llama", "micro", vocab_size=96, max_positions=64, seed=3,
                        overrides={"tie_word_embeddings": tied})
    path = tmp_path / ("tied" if tied else "untied")
    model.save_pretrained(path)
    return path


def test_gpt_neox_stream_equals_in_memory_block_for_block(tiny_run):
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    from qrobust.api import eval_blocks
    blocks = eval_blocks(ck, n_blocks=7)
    spec = QuantSpec(method="rtn", bits=3, group_size=16)
    res = streamed_losses(ck, spec, blocks, batch_size=3)  # 3 + 3 + 1: an uneven last batch too
    fp, q = _in_memory(ck, spec, blocks, 3)
    assert res.fp.block_sums == fp.block_sums and res.q.block_sums == q.block_sums
    assert res.q.loss > res.fp.loss and len(res.block_seconds) == 2 and len(res.layers) == 8


@pytest.mark.parametrize("tied", [False, True])
def test_llama_stream_equals_in_memory(tmp_path, tied):
    path = _llama(tmp_path, tied)
    blocks = torch.randint(0, 96, (5, 24), generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(method="rtn", bits=4, group_size=16, exclude=("*down_proj",))
    res = streamed_losses(path, spec, blocks, batch_size=2)
    fp, q = _in_memory(path, spec, blocks, 2)
    assert res.fp.block_sums == fp.block_sums and res.q.block_sums == q.block_sums
    assert not any(n.endswith("down_proj") for n in res.layers)


def test_bf16_stream_equals_bf16_in_memory(tmp_path):
    path = _llama(tmp_path, False)
    blocks = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(method="rtn", bits=4, group_size=16)
    res = streamed_losses(path, spec, blocks, batch_size=4, dtype="bfloat16")
    fp, q = _in_memory(path, spec, blocks, 4, dtype="bfloat16")
    assert res.fp.block_sums == fp.block_sums and res.q.block_sums == q.block_sums


def test_what_cannot_be_streamed_is_refused(tmp_path):
    path = _llama(tmp_path, False)
    blocks = torch.randint(0, 96, (2, 16))
    from qrobust.quant.registry import QUANTIZERS, register_quantizer
    from qrobust.quant.methods.rtn import RTN

    class Plugin(RTN):  # a method that says it cannot stream
        name = "plugin-rtn"
        streamable = False
    register_quantizer(Plugin)
    try:
        with pytest.raises(QrobustError, match="layer streaming supports awq, gptq, rtn so far; 'plugin-rtn'"):
            streamed_losses(path, QuantSpec(method="plugin-rtn", bits=4, group_size=16), blocks)
    finally:
        del QUANTIZERS["plugin-rtn"]
    with pytest.raises(QrobustError, match="AWQ needs calibration"):
        streamed_losses(path, QuantSpec(method="awq", bits=4, group_size=16), blocks)
    from safetensors.torch import load_file, save_file
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    name = next(k for k in tensors if k.endswith("layers.1.mlp.up_proj.weight"))
    del tensors[name]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="layers.1.mlp.up_proj.weight"):
        streamed_losses(path, QuantSpec(method="rtn", bits=4, group_size=16), blocks)
    with pytest.raises(CheckpointError, match="not a model folder"):
        streamed_losses(tmp_path / "nothing", QuantSpec(method="rtn", bits=4, group_size=16), blocks)


def test_gptq_stream_equals_in_memory_sequential_gptq(tmp_path, tiny_run):
    import qrobust
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    blocks = qrobust.eval_blocks(ck, n_blocks=5)
    calib = qrobust.calib_blocks(ck, n_samples=6)
    for options in ((), (("act_order", True), ("true_sequential", False))):
        spec = QuantSpec(method="gptq", bits=3, group_size=16, options=options)
        res = streamed_losses(ck, spec, blocks, batch_size=2, calibration=calib)
        model = load_checkpoint(ck)
        fp = evaluate_loss(model, blocks, 2)
        with quantized(model, spec, calib):
            q = evaluate_loss(model, blocks, 2)
        assert res.fp.block_sums == fp.block_sums and res.q.block_sums == q.block_sums
        assert all("gptq_loss" in v for v in res.layers.values())
    with pytest.raises(QrobustError, match="needs calibration"):
        streamed_losses(ck, QuantSpec(method="gptq", bits=3, group_size=16), blocks)
    with pytest.raises(QrobustError, match="block-sequential"):
        streamed_losses(ck, QuantSpec(method="gptq", bits=3, group_size=16, options=(("sequential", False),)),
                        blocks, calibration=calib)


def test_streamed_gptq_takes_the_next_inputs_from_its_own_last_pass(tiny_run, monkeypatch):
    """The calibration stream is never advanced by the pipeline: GPTQ's staged pass that finishes a block
    hands its outputs over (one block forward per block saved), and the numbers stay those of the block
    re-run (the in-memory test above compares them bit for bit)."""
    import qrobust
    from qrobust.quant.pipelines.streamed import hidden_states, stream_checkpoint
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    blocks, calib = qrobust.eval_blocks(ck, n_blocks=3), qrobust.calib_blocks(ck, n_samples=4)
    advanced = []
    real = hidden_states.HiddenStates.advance
    monkeypatch.setattr(hidden_states.HiddenStates, "advance", lambda self, block: advanced.append(self) or real(self, block))
    spec = QuantSpec(method="gptq", bits=3, group_size=16)
    run = stream_checkpoint(ck, [spec], blocks, batch_size=2, calibration={spec: calib})
    n_layers = len(run.block_seconds)
    assert len(advanced) == 2 * n_layers  # the FP and the quantized evaluation streams, once per block
    assert len({id(s) for s in advanced}) == 2


def _in_memory_q(path: Path, specs, blocks: torch.Tensor, batch_size: int, calib: torch.Tensor):
    model = load_checkpoint(path)
    out = {}
    for spec in specs:
        with quantized(model, spec, calib) as qr:
            out[spec] = (evaluate_loss(model, blocks, batch_size), qr.layers)
    return evaluate_loss(model, blocks, batch_size), out


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_awq_stream_equals_in_memory_awq(tmp_path, tiny_run, arch):
    import qrobust
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    path = ck if arch == "gpt_neox" else _llama(tmp_path, False)
    blocks = qrobust.eval_blocks(ck, n_blocks=4) if arch == "gpt_neox" else torch.randint(
        0, 96, (4, 24), generator=torch.Generator().manual_seed(4))
    calib = qrobust.calib_blocks(ck, n_samples=4) if arch == "gpt_neox" else torch.randint(
        0, 96, (4, 24), generator=torch.Generator().manual_seed(5))
    spec = QuantSpec(method="awq", bits=3, group_size=16)
    res = streamed_losses(path, spec, blocks, batch_size=2, calibration=calib)
    fp, mem = _in_memory_q(path, [spec], blocks, 2, calib)
    q, layers = mem[spec]
    assert res.fp.block_sums == fp.block_sums and res.q.block_sums == q.block_sums
    assert res.q.loss != res.fp.loss
    assert res.layers.keys() == layers.keys()
    for n, v in layers.items():  # AWQ's errors are of the equivalent weight Q(W·s)/s against W
        assert res.layers[n]["rel_err"] == v["rel_err"] and res.layers[n]["numel"] == v["numel"]


def test_several_variants_in_one_pass_equal_in_memory_in_every_tier(tmp_path, tiny_run):
    import qrobust
    from qrobust.quant.pipelines.streamed import stream_checkpoint
    ck = tiny_run / "checkpoints" / "main" / "step-0000012"
    blocks = qrobust.eval_blocks(ck, n_blocks=5)
    calib = qrobust.calib_blocks(ck, n_samples=4)
    specs = [QuantSpec(method="gptq", bits=3, group_size=16), QuantSpec(method="rtn", bits=2, group_size=16),
             QuantSpec(method="rtn", bits=4, group_size=16, include=("*.0.*",)),  # quantizes block 0 only
             QuantSpec(method="awq", bits=3, group_size=16)]
    calibs = {s: calib for s in specs if s.method != "rtn"}
    fp, mem = _in_memory_q(ck, specs, blocks, 2, calib)
    for tier in ("device", "cpu", "disk"):
        run = stream_checkpoint(ck, specs, blocks, batch_size=2, calibration=calibs, states=tier,
                                states_dir=tmp_path / "states")
        assert run.tier == ("device" if tier == "cpu" else tier)  # on a CPU, host memory is the device
        assert run.fp.block_sums == fp.block_sums
        for v in run.variants:
            assert v.q.block_sums == mem[v.spec][0].block_sums, (tier, v.spec.label)
            assert v.layers.keys() == mem[v.spec][1].keys()
    assert not any((tmp_path / "states").iterdir())  # the disk tier's files are gone
    again = stream_checkpoint(ck, specs[1:2], blocks, batch_size=2, fp=False)
    assert again.fp is None and again.variants[0].q.block_sums == mem[specs[1]][0].block_sums


def test_states_tier_follows_free_memory():
    from qrobust.quant.pipelines.streamed import choose_tier
    from qrobust.quant.pipelines.streamed.hidden_states import resolve_tier, state_bytes
    gpu, cpu = torch.device("cuda:0"), torch.device("cpu")
    gb = 1 << 30
    assert state_bytes(64 * 2048, 8192, torch.float32) == 4 * gb  # 64 blocks of 2048 tokens, 8192 wide
    assert choose_tier(4 * gb, gpu, free_device=10 * gb, free_host=100 * gb) == "device"
    assert choose_tier(6 * gb, gpu, free_device=10 * gb, free_host=100 * gb) == "cpu"  # half the GPU is the cap
    assert choose_tier(60 * gb, gpu, free_device=10 * gb, free_host=100 * gb) == "disk"
    assert choose_tier(4 * gb, cpu, free_device=None, free_host=10 * gb) == "device"
    assert choose_tier(6 * gb, cpu, free_device=None, free_host=10 * gb) == "disk"
    assert resolve_tier("auto", 1, cpu) == "device" and resolve_tier("auto", 1 << 60, cpu) == "disk"
    with pytest.raises(QrobustError, match="unknown states tier 'ram'"):
        resolve_tier("ram", 1, cpu)


@pytest.mark.parametrize("tier", ["disk", "cpu"])
def test_states_round_trip_exactly(tmp_path, tier):
    from qrobust.quant.pipelines.streamed import HiddenStates
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        h = [torch.randn(2, 5, 8, generator=g).to(dtype), torch.randn(1, 5, 8, generator=g).to(dtype)]
        s = HiddenStates(tier, torch.device("cpu"), tmp_path)  # "cpu" on a CPU: the GPU path's copies, as no-ops
        for x in h:
            s.append((x, "rest"), {"k": 1})
        twin = s.copy()
        (a0, rest), kw = s[0]
        assert torch.equal(a0, h[0]) and a0.dtype == dtype and rest == "rest" and kw == {"k": 1}
        s.put(1, h[0])
        assert torch.equal(s.hidden(1), h[0]) and torch.equal(twin.hidden(1), h[1])
        s.close(), twin.close()
    assert not any(tmp_path.iterdir())
