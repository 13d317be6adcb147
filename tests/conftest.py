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
