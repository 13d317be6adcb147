"""``plan_training`` / ``qrobust train --plan``: steps, tokens, FLOPs, parameters, memory and GPU-hours
against numbers computed by hand for a small config; batching rules; where the vocabulary comes from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qrobust.cli import main
from qrobust.config import DataConfig, TrainConfig
from qrobust.errors import ConfigError, DataError
from qrobust.training.planning import batching, plan_training, planned_vocab

H, L, I, V, T = 128, 4, 512, 257, 64  # tiny preset, byte vocabulary, seq_len
CFG = dict(name="plan", steps=100, batch_size=8, checkpoint_every=50, precision="bf16-mixed", micro_batch_size=2,
           data=dict(tokenizer="byte", seq_len=T), model=dict(arch="gpt_neox", preset="tiny"),
           schedule=dict(kind="wsd", warmup_steps=10), branches=[dict(from_step=50, decay_steps=30)],
           averaging=[dict(kind="lawa", window=3)])

MATMUL = L * (4 * H * H + 2 * H * I) + H * V  # 819,328: QKV + dense + MLP per layer, LM head
LAYER_PARAMS = 4 * H + 3 * H * H + 3 * H + H * H + H + H * I + I + I * H + H  # 198,272 (with biases, 2 LayerNorms)
PARAMS = 2 * V * H + L * LAYER_PARAMS + 2 * H  # 859,136
TRAIN_FLOPS_PER_TOKEN = 6 * MATMUL + 12 * L * H * T  # 5,309,184


def test_hand_computed_plan():
    plan = plan_training(TrainConfig(**CFG), world_size=2, mfu=0.5)
    assert (plan.params.total, plan.params.non_embedding) == (PARAMS, PARAMS - 2 * V * H) == (859_136, 793_344)
    assert plan.flops_per_token.training == TRAIN_FLOPS_PER_TOKEN == 5_309_184
    b = plan.batching
    assert (b.micro_batch_size, b.grad_accum, b.world_size) == (2, 2, 2)
    main_run, branch = plan.runs
    assert (main_run.name, main_run.steps, main_run.tokens, main_run.tokens_at_end) == ("main", 100, 51_200, 51_200)
    assert (branch.name, branch.steps, branch.tokens, branch.tokens_at_end) == ("decay50", 30, 15_360, 40_960)
    assert main_run.flops == 51_200 * 5_309_184
    assert plan.total_flops == 66_560 * 5_309_184 and plan.total_tokens == 66_560 and plan.total_steps == 130
    assert plan.averaged == ("lawa3",)
    # H100 SXM: 989.4 TFLOP/s bf16 dense, at MFU 0.5
    assert plan.gpu_hours["H100 SXM"] == pytest.approx(66_560 * 5_309_184 / (989.4e12 * 0.5) / 3600)
    assert plan.gpu_hours["A100"] == pytest.approx(66_560 * 5_309_184 / (312e12 * 0.5) / 3600)


def test_hand_computed_memory():
    plan = plan_training(TrainConfig(**CFG), world_size=2)
    micro_tokens = 2 * T
    activations = micro_tokens * (L * 2 * (10 * H + 2 * I) + V * (2 + 8))  # bf16 values, logits + fp32 copy + grad
    ddp, fsdp = plan.memory["ddp"], plan.memory["fsdp"]
    assert (ddp.states, ddp.autocast_copies, ddp.gathered, ddp.activations) == (
        16 * PARAMS, 2 * MATMUL, 0, activations)
    assert activations == 2_688_256
    gathered = 2 * 4 * (LAYER_PARAMS + 2 * H // L)  # two fp32 layers (the final LayerNorm shared out)
    assert (fsdp.states, fsdp.autocast_copies, fsdp.gathered, fsdp.activations) == (
        16 * PARAMS // 2, MATMUL, gathered, activations)
    assert ddp.total == 16 * PARAMS + 2 * MATMUL + activations


def test_fp32_has_no_autocast_copies_and_wider_activations():
    plan = plan_training(TrainConfig(**{**CFG, "precision": "fp32"}))
    m = plan.memory["ddp"]
    assert m.autocast_copies == 0
    assert m.activations == 2 * T * (L * 4 * (10 * H + 2 * I) + 8 * V)
    assert plan.gpu_hours["H100 SXM"] == pytest.approx(66_560 * 5_309_184 / (66.9e12 * 0.4) / 3600)


@pytest.mark.parametrize("batch,micro,accum,world,expect", [
    (256, None, None, 8, (32, 1)), (256, 16, None, 8, (16, 2)), (256, None, 4, 8, (8, 4)), (12, 2, 3, 2, (2, 3))])
def test_batching(batch, micro, accum, world, expect):
    b = batching(batch, micro, accum, world)
    assert (b.micro_batch_size, b.grad_accum) == expect
    assert b.micro_batch_size * b.grad_accum * b.world_size == batch


@pytest.mark.parametrize("batch,micro,accum,world", [(10, None, None, 3), (256, 48, None, 2), (12, 2, 2, 2)])
def test_batching_that_does_not_divide_is_one_error(batch, micro, accum, world):
    with pytest.raises(ConfigError, match="batch"):
        batching(batch, micro, accum, world)


def test_vocab_sources(tmp_path):
    assert planned_vocab(DataConfig(tokenizer="byte")) == (257, "byte tokenizer")
    assert planned_vocab(DataConfig(tokenizer="bpe", vocab_size=1000))[0] == 1000
    shards = tmp_path / "shards"
    assert planned_vocab(DataConfig(shards=str(shards), vocab_size=50304))[0] == 50304  # not prepared yet
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"vocab_size": 50277}))
    assert planned_vocab(DataConfig(shards=str(shards))) == (50277, str(shards / "manifest.json"))
    (shards / "manifest.json").write_text(json.dumps({"tokenizer": {"vocab_size": 50280, "fingerprint": "x"}}))
    assert planned_vocab(DataConfig(shards=str(shards)))[0] == 50280  # as `qrobust data prepare` nests it
    (shards / "manifest.json").write_text(json.dumps({"documents": 3}))
    with pytest.raises(DataError, match="vocab_size"):
        planned_vocab(DataConfig(shards=str(shards)))


def test_vocab_of_a_tokenizer_folder(tmp_path):
    from qrobust.data.tokenizer import build_tokenizer
    docs = ["the quick brown fox jumps over the lazy dog " * 20, "pack my box with five dozen liquor jugs " * 20]
    tok = build_tokenizer("bpe", docs, vocab_size=300)
    tok.save_pretrained(tmp_path / "tok")
    assert planned_vocab(DataConfig(tokenizer=str(tmp_path / "tok"))) == (len(tok), str(tmp_path / "tok"))


def test_cli_plan_prints_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "plan.yaml"
    cfg.write_text(yaml.safe_dump({**CFG, "out": str(out), "micro_batch_size": None}))
    assert main(["train", str(cfg), "--plan", "--mfu", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "859,136 (793,344 non-embedding)" in text
    assert "micro 8 × grad_accum 1 × world 1" in text
    assert "decay50" in text and "lawa3" in text and "H100 SXM" in text
    assert not out.exists()


def test_cli_plan_bad_split_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "plan.yaml"
    cfg.write_text(yaml.safe_dump({**CFG, "out": str(tmp_path / "run")}))
    assert main(["train", str(cfg), "--plan", "--nodes", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch_size 8" in err
    assert not Path(tmp_path / "run").exists()


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_activation_estimate_matches_what_autograd_saves(arch):
    """The memory estimate's activations against a measurement: the bytes of every tensor autograd saves for
    backward in one fp32 forward (parameters excluded, each storage once) plus the logits' gradient."""
    import torch

    from qrobust.models import build_model, model_config
    from qrobust.training.memory import activation_bytes
    vocab, seq, batch = 2048, 128, 4
    model = build_model(arch, "tiny", vocab, seq)
    model.train()
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    x = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=x, labels=x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for ptr, n in saved.items() if ptr not in params) + 4 * vocab * batch * seq
    _, config = model_config(arch, "tiny", vocab, seq)
    assert activation_bytes(config, batch * seq, "fp32") == pytest.approx(measured, rel=0.1)
