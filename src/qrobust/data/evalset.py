"""Evaluation and calibration sets, identified by everything that determines their tokens.

Defaults come from the trajectory's own data config, so a sweep evaluates on the validation split the
model never trained on, packed at the training sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import CalibrationConfig, DataConfig, EvalConfig, parse_config
from ..errors import ConfigError, DataError
from .blocks import calibration_blocks, pack_blocks, take_blocks
from .prepare import eval_stream
from .shard_training import shard_calibration, shard_eval_tokens
from .tokenizer import file_fingerprint, tokenizer_fingerprint  # noqa: F401 - their home before shards
from ..sources import cached_snapshot
from ..trajectory import Checkpoint
from ..io.keys import record_key
from ..io.files import STATE_FILE


def checkpoint_data_config(folder: str | Path) -> DataConfig | None:
    """The data config a qrobust checkpoint was trained with (from ``qrobust_state.json``), if any."""
    import json

    st = Path(folder) / STATE_FILE
    if not st.is_file():
        return None
    try:
        data = json.loads(st.read_text()).get("data")
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"'{st}' is damaged (not a JSON object); delete it to evaluate without the "
                          "training data config, or restore it") from None
    return parse_config(DataConfig, data, f"'data' in {st}") if data else None


def has_training_data(ck: Checkpoint) -> bool | None:
    """Whether a checkpoint carries the data config qrobust trained it with (``qrobust_state.json``); None
    when that cannot be told without fetching it (a Hub revision not in the local cache)."""
    if ck.repo is None:
        return checkpoint_data_config(ck.path) is not None
    snap = cached_snapshot(ck.repo, ck.revision or "")
    return None if snap is None else checkpoint_data_config(snap) is not None


@dataclass
class EvalSet:
    id: str
    blocks: torch.Tensor
    info: dict[str, Any]


def _source(corpus: str | None, field: str | None, data_cfg: DataConfig | None) -> tuple[str, str | None, int | None]:
    """Corpus spec, field and char cap: the trajectory's own corpus unless another is named."""
    if corpus is None or (data_cfg is not None and corpus == data_cfg.corpus):
        if data_cfg is None:
            return "builtin", field, DataConfig().max_chars
        return data_cfg.corpus, field or data_cfg.field, data_cfg.max_chars
    return corpus, field, None


def _from_shards(corpus: str | None, data_cfg: DataConfig | None) -> bool:
    """A trajectory trained from token shards is evaluated on them unless another corpus is named."""
    return corpus is None and data_cfg is not None and bool(data_cfg.shards)


def _shard_eval_set(cfg: EvalConfig, data_cfg: DataConfig, tok_fp: str) -> EvalSet:
    seq_len = cfg.seq_len or data_cfg.seq_len
    stream, info = shard_eval_tokens(data_cfg, cfg.split, cfg.n_blocks * seq_len)
    blocks = take_blocks(pack_blocks(stream, seq_len, f"evaluation split '{cfg.split}' of the shards"), cfg.n_blocks)
    info.update({"split": cfg.split, "n_blocks": int(blocks.shape[0]), "seq_len": seq_len, "tokenizer": tok_fp,
                 "n_tokens": int(blocks.shape[0] * (seq_len - 1))})
    return EvalSet(id=record_key(info), blocks=blocks, info=info)


def build_eval_set(cfg: EvalConfig, data_cfg: DataConfig | None, tokenizer, tok_fp: str) -> EvalSet:
    if _from_shards(cfg.corpus, data_cfg):
        return _shard_eval_set(cfg, data_cfg, tok_fp)
    corpus, field, max_chars = _source(cfg.corpus, cfg.field, data_cfg)
    seq_len = cfg.seq_len or (data_cfg.seq_len if data_cfg else 128)
    stream = eval_stream(corpus, field, cfg.split, data_cfg, tokenizer, max_chars)
    blocks = take_blocks(pack_blocks(stream, seq_len, f"evaluation split '{cfg.split}' of '{corpus}'"), cfg.n_blocks)
    split_by = {"val_fraction": data_cfg.val_fraction, "seed": data_cfg.seed} if data_cfg else {}
    info = {"corpus": corpus, "field": field, "max_chars": max_chars, "split": cfg.split, "split_by": split_by,
            "n_blocks": int(blocks.shape[0]), "seq_len": seq_len, "tokenizer": tok_fp,
            "n_tokens": int(blocks.shape[0] * (seq_len - 1))}
    return EvalSet(id=record_key(info), blocks=blocks, info=info)


def default_calibration_length(data_cfg: DataConfig | None, model_config: Any) -> int:
    """The training length for checkpoints qrobust trained; otherwise min(2048, the model's context).

    ``model_config`` is a transformers config or the dict of a ``config.json``."""
    if data_cfg is not None:
        return min(2048, data_cfg.seq_len)
    get = model_config.get if isinstance(model_config, dict) else (lambda k: getattr(model_config, k, None))
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return min(2048, v)
    return 2048


def build_calibration(cfg: CalibrationConfig, data_cfg: DataConfig | None, tokenizer, tok_fp: str,
                      default_seq_len: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Calibration windows from the *training* split (never the evaluation blocks)."""
    seq_len = cfg.seq_len or default_seq_len
    if _from_shards(cfg.corpus, data_cfg):
        blocks, info = shard_calibration(data_cfg, cfg.n_samples, seq_len, cfg.seed)
        info.update({"split": "train", "n_samples": cfg.n_samples, "seq_len": seq_len, "seed": cfg.seed,
                     "tokenizer": tok_fp})
        return blocks, info
    corpus, field, max_chars = _source(cfg.corpus, cfg.field, data_cfg)
    split = "train" if data_cfg is not None else "all"
    stream = eval_stream(corpus, field, split, data_cfg, tokenizer, max_chars)
    if stream.numel() < cfg.n_samples * seq_len:
        raise DataError(f"calibration corpus '{corpus}' ({split} split) has {stream.numel()} tokens, fewer than the "
                        f"requested {cfg.n_samples} samples x {seq_len} tokens; lower calibration n_samples / "
                        "seq_len (--calib-samples / --calib-seq-len) or name a larger corpus")
    blocks = calibration_blocks(stream, cfg.n_samples, seq_len, cfg.seed)
    info = {"corpus": corpus, "field": field, "split": split, "n_samples": cfg.n_samples, "seq_len": seq_len,
            "seed": cfg.seed, "tokenizer": tok_fp}
    return blocks, info
