"""The monitor's fixed held-out blocks and calibration windows, built by the sweep's own builders.

A monitor value at step s must equal what a sweep records for the checkpoint of step s with the same settings
(eval ``n_blocks`` = the monitor's, same bits / group size, GPTQ with ``calibration.n_samples`` =
``calib_samples``). So the blocks come from :func:`~qrobust.data.evalset.build_eval_set` on the validation split
of the training data (the first ``n_blocks`` blocks, as a sweep's eval set) and the calibration windows from
:func:`~qrobust.data.evalset.build_calibration` on the training split at the training length.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import CalibrationConfig, DataConfig, EvalConfig, MonitorConfig
from ..data.evalset import build_calibration, build_eval_set, default_calibration_length
from ..data.tokenizer import tokenizer_fingerprint
from ..errors import ConfigError, DataError


def tokenizer_fp(tokenizer: Any) -> str:
    """The fingerprint a sweep computes from a checkpoint folder, for a tokenizer held in memory (it is saved
    to a scratch folder the way every checkpoint saves it)."""
    with tempfile.TemporaryDirectory(prefix="qrobust-tok-") as d:
        tokenizer.save_pretrained(d)
        return tokenizer_fingerprint(Path(d))


def eval_blocks(cfg: MonitorConfig, data_cfg: DataConfig, tokenizer: Any, tok_fp: str) -> torch.Tensor:
    """The first ``n_blocks`` validation blocks; refused when the split holds fewer (a smaller monitor set
    would silently not be the one asked for)."""
    ecfg = EvalConfig(n_blocks=cfg.n_blocks, batch_size=cfg.batch_size, split="val")
    es = build_eval_set(ecfg, data_cfg, tokenizer, tok_fp)
    have = int(es.blocks.shape[0])
    if have < cfg.n_blocks:
        raise ConfigError(f"monitor.n_blocks is {cfg.n_blocks}, but the validation split holds only {have} blocks "
                          f"of {data_cfg.seq_len} tokens; set monitor.n_blocks to at most {have} (or raise "
                          "data.val_fraction / use more text)")
    return es.blocks


def calibration_config(cfg: MonitorConfig) -> CalibrationConfig:
    """The calibration settings of a sweep whose GPTQ records the monitor's GPTQ values equal."""
    return CalibrationConfig(n_samples=cfg.calib_samples)


def calibration(cfg: MonitorConfig, data_cfg: DataConfig, tokenizer: Any, tok_fp: str) -> torch.Tensor:
    """``calib_samples`` windows of the training length from the training split (as a sweep's calibration)."""
    seq_len = default_calibration_length(data_cfg, None)
    try:
        blocks, _ = build_calibration(calibration_config(cfg), data_cfg, tokenizer, tok_fp, seq_len)
    except DataError:
        raise ConfigError(f"monitor: the training split has too few tokens for {cfg.calib_samples} calibration "
                          f"windows of {seq_len} tokens (GPTQ / calibration predictors); lower "
                          "monitor.calib_samples, or set monitor.gptq_every: 0 and drop calibration predictors"
                          ) from None
    return blocks
