"""Layer-streamed evaluation gives the in-memory numbers: FP and RTN losses, block by block, for
GPT-NeoX and Llama (tied and untied heads), in fp32 and bf16; and refuses what it cannot stream."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qrobust.errors import CheckpointError, QrobustError
from qrobust.evaluate import evaluate_loss
from qrobust.layerwise import streamed_losses
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
    with pytest.raises(QrobustError, match="layer streaming supports rtn, gptq so far; 'awq'"):
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
