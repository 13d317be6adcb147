"""Token blocks for one checkpoint: its held-out evaluation blocks and its calibration windows, tokenized
with the checkpoint's own tokenizer and defaulting to the data it was trained on. The API (``eval_blocks``,
``calib_blocks``), the CLI's ``eval`` and the workflows all take their blocks from here."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import CalibrationConfig, EvalConfig, parse_config
from ..models import read_model_config
from .evalset import (build_calibration, build_eval_set, checkpoint_data_config, default_calibration_length,
                      tokenizer_fingerprint)
from .tokenizer import load_tokenizer


def eval_blocks(checkpoint: str | Path, corpus: str | None = None, split: str = "val", n_blocks: int = 64,
                seq_len: int | None = None, field: str | None = None, trust_remote_code: bool = False) -> torch.Tensor:
    """Held-out token blocks for ``checkpoint``, tokenized with its own tokenizer.

    Defaults follow the checkpoint's training data config (its validation split) when it has one.
    """
    p = Path(checkpoint)
    tok = load_tokenizer(p, trust_remote_code)
    data_cfg = checkpoint_data_config(p)
    ecfg = parse_config(EvalConfig, {"corpus": corpus, "split": split, "n_blocks": n_blocks, "seq_len": seq_len,
                                     "field": field}, "eval settings")
    return build_eval_set(ecfg, data_cfg, tok, tokenizer_fingerprint(p)).blocks


def calib_blocks(checkpoint: str | Path, n_samples: int = 128, seq_len: int | None = None,
                 corpus: str | None = None, seed: int = 0, field: str | None = None,
                 trust_remote_code: bool = False) -> torch.Tensor:
    """Seeded calibration windows ([n_samples, seq_len]) from the checkpoint's training split (or ``corpus``)."""
    p = Path(checkpoint)
    data_cfg = checkpoint_data_config(p)
    ccfg = parse_config(CalibrationConfig, {"corpus": corpus, "field": field, "n_samples": n_samples,
                                            "seq_len": seq_len, "seed": seed}, "calibration settings")
    default_len = default_calibration_length(data_cfg, read_model_config(p, required=False))
    blocks, _ = build_calibration(ccfg, data_cfg, load_tokenizer(p, trust_remote_code), tokenizer_fingerprint(p),
                                  default_len)
    return blocks
