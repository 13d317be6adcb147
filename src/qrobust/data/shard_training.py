"""Training and evaluating from a token shard folder (``data.shards``): what the data config's other keys mean
then, and the guard that keeps a run on the shards it started with.

With ``data.shards`` set, the shards decide the corpus, its train/val split and the tokenizer: ``corpus``,
``field``, ``max_chars``, ``val_fraction``, ``seed`` and ``vocab_size`` are not read. ``data.tokenizer`` left
at its default (``bpe``) or naming the shards' own kind uses the shards' tokenizer; a tokenizer folder must
hold that same tokenizer (same fingerprint). ``seq_len`` packs the blocks as always.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..errors import DataError
from ..io.atomic import write_text
from .shards import ShardBlocks, TokenShards, open_shards
from .tokenizer import tokenizer_fingerprint

RECORD = "shards.json"  # in a run's data cache folder: the shard folder the run started with


def check_tokenizer(cfg: DataConfig, shards: TokenShards) -> None:
    """``data.tokenizer`` must mean the shards' tokenizer (module doc)."""
    kind = shards.manifest["settings"]["tokenizer"]
    if cfg.tokenizer in ("bpe", kind):
        return
    if Path(cfg.tokenizer).is_dir() and tokenizer_fingerprint(cfg.tokenizer) == shards.fingerprint:
        return
    raise DataError(f"data.tokenizer '{cfg.tokenizer}' is not the tokenizer of the shards in '{shards.folder}' "
                    f"(made with '{kind}'); leave data.tokenizer out to use the shards' own")


def record_shards(cache_dir: Path, shards: TokenShards) -> None:
    """Remember which shards a run trains on; a re-run (resume) on other shards is one DataError line."""
    path = cache_dir / RECORD
    now = {"shards": str(shards.folder), "tokenizer": shards.fingerprint, "id": shards.id}
    if path.is_file():
        try:
            had = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            had = None
        if isinstance(had, dict) and had.get("tokenizer") != shards.fingerprint:
            raise DataError(f"'{shards.folder}' is a shard folder from another tokenizer than the one this run "
                            f"started with (from '{had.get('shards')}'); point data.shards at that folder or "
                            "train into a new out folder")
        if isinstance(had, dict) and had.get("id") != shards.id:
            raise DataError(f"'{shards.folder}' holds other tokens than the shards this run started with (from "
                            f"'{had.get('shards')}'); point data.shards at that folder or train into a new out folder")
        if had == now:
            return
    write_text(path, json.dumps(now, indent=1), "shard record")


def shard_training(cfg: DataConfig, cache_dir: Path | None, trust_remote_code: bool) -> tuple[Any, ShardBlocks]:
    """The shards' tokenizer and ``seq_len`` training blocks, read from disk as the batches ask."""
    shards = open_shards(str(cfg.shards), trust_remote_code)
    check_tokenizer(cfg, shards)
    if cache_dir is not None:
        record_shards(Path(cache_dir), shards)
    return shards.tokenizer, shards.train_blocks(cfg.seq_len)


def shard_eval_tokens(data_cfg: DataConfig, split: str, n_tokens: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first ``n_tokens`` of a shard split (``val`` or ``train``) and what identifies them."""
    if split not in ("val", "train"):
        raise DataError(f"evaluation split '{split}' is not kept in token shards (they hold 'train' and 'val'); "
                        "use split val or train, or name a corpus")
    shards = open_shards(str(data_cfg.shards))
    stream = shards.stream(split)
    tokens = torch.from_numpy(stream.read(0, min(n_tokens, len(stream))))
    return tokens, source_info(shards)


def shard_calibration(data_cfg: DataConfig, n_samples: int, seq_len: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Calibration windows from the shards' train split (as ``calibration_blocks`` of that stream)."""
    shards = open_shards(str(data_cfg.shards))
    n = len(shards.stream("train"))
    if n < n_samples * seq_len:
        raise DataError(f"calibration from the shards in '{shards.folder}' (train split) has {n} tokens, fewer than "
                        f"the requested {n_samples} samples x {seq_len} tokens; lower calibration n_samples / "
                        "seq_len (--calib-samples / --calib-seq-len) or name a larger corpus")
    return shards.calibration_windows(n_samples, seq_len, seed), source_info(shards)


def source_info(shards: TokenShards) -> dict[str, Any]:
    """How eval/calibration records name shard data: the corpus they came from and the shard set's id."""
    s = shards.manifest["settings"]
    return {"corpus": s["corpus"], "field": s["field"], "max_chars": s["max_chars"], "shards": shards.id,
            "split_by": {"val_fraction": s["val_fraction"], "seed": s["seed"]}}
