"""Training and evaluating from token shards (``data.shards``): the same weights as training from the corpus
itself, the same evaluation and calibration blocks, and one clear line when the shards do not fit the run."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_SWEEP, TINY_TRAIN
from qrobust.config import CalibrationConfig, DataConfig, EvalConfig, TrainConfig, parse_config
from qrobust.data.evalset import build_calibration, build_eval_set
from qrobust.data.prepare import prepare_training
from qrobust.data.shard_format import ShardSettings
from qrobust.data.shard_writer import write_shards
from qrobust.errors import DataError
from qrobust.sweeps import Store, sweep
from qrobust.training.loop import train

DATA = TINY_TRAIN["data"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The tiny run's corpus as shards (several files), with the tiny run's data settings."""
    out = tmp_path_factory.mktemp("tiny_shards") / "s"
    write_shards(ShardSettings(max_chars=DATA["max_chars"], vocab_size=DATA["vocab_size"], shard_tokens=20_000),
                 out, progress=False)
    return out


def _shard_config(out: Path, shards: Path) -> TrainConfig:
    cfg = copy.deepcopy(TINY_TRAIN)
    cfg.update(out=str(out), data={"shards": str(shards), "seq_len": DATA["seq_len"]})
    return parse_config(TrainConfig, cfg)


@pytest.fixture(scope="module")
def shard_run(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard_run")
    train(_shard_config(out, shards), progress=False)
    return out


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.parent.relative_to(run)): load_file(str(p)) for p in sorted(run.glob("checkpoints/*/*/model.safetensors"))}


def test_training_from_shards_is_bit_identical_to_training_from_the_corpus(tiny_run, shard_run):
    a, b = _weights(tiny_run), _weights(shard_run)
    assert len(a) == 4 and a.keys() == b.keys()  # steps 4, 8, 12 and the branch's 12
    for ck in a:
        assert a[ck].keys() == b[ck].keys()
        assert all(torch.equal(a[ck][k], b[ck][k]) for k in a[ck]), ck


def test_sweep_of_the_shard_run_evaluates_on_the_same_blocks(shard_run, tiny_results, tmp_path):
    s = sweep({"trajectory": str(shard_run), "out": str(tmp_path / "res"), **TINY_SWEEP}, progress=False)
    assert s.records_written == 8

    def losses(res: Path) -> dict:
        return {(r.checkpoint.run, r.checkpoint.step, r.variant.bits): (r.metrics.loss_fp, r.metrics.loss_q)
                for r in Store(res, create=False).records()}
    assert losses(tmp_path / "res") == losses(tiny_results)  # same weights, same val blocks: same numbers
    rec = Store(tmp_path / "res", create=False).records()[0]
    assert rec.eval_set.n_tokens == 6 * 31


def test_eval_and_calibration_sets_from_shards_equal_the_corpus_ones(shards):
    mem = DataConfig(**DATA)
    shd = DataConfig(shards=str(shards), seq_len=DATA["seq_len"])
    tok = prepare_training(shd).tokenizer
    for split in ("val", "train"):
        ecfg = EvalConfig(n_blocks=5, split=split)
        a, b = build_eval_set(ecfg, mem, tok, "fp"), build_eval_set(ecfg, shd, tok, "fp")
        assert torch.equal(a.blocks, b.blocks) and b.blocks.shape == (5, 32)
        assert a.id != b.id and b.info["shards"]  # the record says where its tokens came from
    ccfg = CalibrationConfig(n_samples=6, seed=2)
    (ca, _), (cb, info) = build_calibration(ccfg, mem, tok, "fp", 24), build_calibration(ccfg, shd, tok, "fp", 24)
    assert torch.equal(ca, cb) and info["split"] == "train"
    with pytest.raises(DataError, match="split 'all' is not kept in token shards"):
        build_eval_set(EvalConfig(split="all"), shd, tok, "fp")


def test_resume_on_shards_from_another_tokenizer_is_one_line(shard_run, tmp_path):
    import shutil
    other = tmp_path / "byte"
    write_shards(ShardSettings(max_chars=DATA["max_chars"], tokenizer="byte"), other, progress=False)
    out = tmp_path / "run"
    shutil.copytree(shard_run / "data", out / "data")
    with pytest.raises(DataError, match="a shard folder from another tokenizer") as e:
        train(_shard_config(out, other), progress=False)
    assert "\n" not in str(e.value)


def test_data_tokenizer_must_be_the_shards_own(shards, tmp_path):
    with pytest.raises(DataError, match="is not the tokenizer of the shards"):
        prepare_training(DataConfig(shards=str(shards), tokenizer="byte"))
    same = prepare_training(DataConfig(shards=str(shards), tokenizer=str(shards / "tokenizer")))
    assert len(same.tokenizer) == DATA["vocab_size"]
    with pytest.raises(DataError, match="shard folder not found"):
        prepare_training(DataConfig(shards=str(tmp_path / "missing")))
