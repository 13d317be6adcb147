"""Shared fixtures: a tiny trained trajectory (micro model, built-in corpus) reused across tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(2)

TINY_TRAIN = {
    "name": "t", "steps": 12, "batch_size": 4, "checkpoint_every": 4, "seed": 0,
    "data": {"corpus": "builtin", "max_chars": 200_000, "seq_len": 32, "vocab_size": 300},
    "model": {"arch": "gpt_neox", "preset": "micro"},
    "optim": {"lr": 3e-3},
    "schedule": {"kind": "constant", "warmup_steps": 2},
    "branches": [{"from_step": 8, "decay_steps": 4}],
}


def tiny_config(out: Path, **over) -> dict:
    import copy
    cfg = copy.deepcopy(TINY_TRAIN)
    cfg["out"] = str(out)
    cfg.update(over)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained micro trajectory: main run (steps 4, 8, 12) + one cooldown branch from step 8 (step 12)."""
    from qrobust.training.loop import train
    from qrobust.config import TrainConfig, parse_config

    out = tmp_path_factory.mktemp("tiny_run")
    train(parse_config(TrainConfig, tiny_config(out)), progress=False)
    return out


# the reference sweep of tiny_run (2 variants x 4 checkpoints = 8 records); tests copy it before changing it
TINY_SWEEP = {"bits": [3, 4], "group_sizes": [16], "eval": {"n_blocks": 6, "batch_size": 4}}


@pytest.fixture(scope="session")
def tiny_results(tiny_run, tmp_path_factory) -> Path:
    """An uninterrupted sweep of the tiny trajectory with TINY_SWEEP (read only: copy it to change it)."""
    from qrobust.sweeps import sweep
    out = tmp_path_factory.mktemp("tiny_results") / "res"
    s = sweep({"trajectory": str(tiny_run), "out": str(out), **TINY_SWEEP}, progress=False)
    assert s.records_written == 8
    return out


STORE_V1 = Path(__file__).parent / "fixtures" / "store_v1"


@pytest.fixture
def store_v1(tmp_path: Path) -> Path:
    """A writable copy of the results folder written by the pre-issue-16 store (tests/fixtures/store_v1)."""
    import shutil
    dst = tmp_path / "store_v1"
    shutil.copytree(STORE_V1, dst)
    return dst
