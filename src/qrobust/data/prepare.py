"""Corpus -> tokenizer -> train/validation token streams, cached in a run folder.

The cache (``tokens.safetensors`` + ``tokenizer/``) is keyed by the data config: a different config in
the same folder is rebuilt, never silently reused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import DataConfig
from ..io.atomic import atomic_dir
from .blocks import BlockSource, TensorBlocks, pack_blocks, split_documents
from .corpus import load_documents
from .tokenizer import build_tokenizer, encode_documents, load_tokenizer


@dataclass
class PreparedData:
    tokenizer: object
    train: torch.Tensor  # int64 token stream
    val: torch.Tensor
    n_train_docs: int
    n_val_docs: int


def _key(cfg: DataConfig) -> str:
    return json.dumps(cfg.model_dump(), sort_keys=True)


def prepare_data(cfg: DataConfig, cache_dir: Path | None = None, trust_remote_code: bool = False) -> PreparedData:
    """Tokenized train/val streams (cached in ``cache_dir``); a tokenizer folder's own Python code runs only
    with ``trust_remote_code``."""
    if cache_dir is not None and (cache_dir / "meta.json").is_file():
        meta = json.loads((cache_dir / "meta.json").read_text())
        if meta.get("key") == _key(cfg):
            t = load_file(str(cache_dir / "tokens.safetensors"))
            return PreparedData(load_tokenizer(cache_dir / "tokenizer", trust_remote_code), t["train"], t["val"],
                                meta["n_train_docs"], meta["n_val_docs"])
    docs = load_documents(cfg.corpus, field=cfg.field, max_chars=cfg.max_chars)
    train_docs, val_docs = split_documents(docs, cfg.val_fraction, cfg.seed)
    tok = build_tokenizer(cfg.tokenizer, train_docs, cfg.vocab_size, max_length=cfg.seq_len,
                          trust_remote_code=trust_remote_code)
    train = encode_documents(tok, train_docs)
    val = encode_documents(tok, val_docs)
    data = PreparedData(tok, train, val, len(train_docs), len(val_docs))
    if cache_dir is not None:
        with atomic_dir(cache_dir, "prepared data") as tmp:
            tok.save_pretrained(str(tmp / "tokenizer"))
            save_file({"train": train, "val": val}, str(tmp / "tokens.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(
                {"key": _key(cfg), "n_train_docs": len(train_docs), "n_val_docs": len(val_docs),
                 "n_train_tokens": train.numel(), "n_val_tokens": val.numel()}, indent=1))
    return data


@dataclass
class TrainingData:
    """What the training loop reads: the tokenizer it saves beside every checkpoint and the training blocks."""

    tokenizer: object
    blocks: BlockSource


def prepare_training(cfg: DataConfig, cache_dir: Path | None = None, trust_remote_code: bool = False) -> TrainingData:
    """The tokenizer and ``seq_len`` blocks of the training split: from ``cfg.shards`` read from disk as needed
    (:mod:`.shard_training`), else tokenized into ``cache_dir`` when needed."""
    if cfg.shards:
        from .shard_training import shard_training
        tok, blocks = shard_training(cfg, cache_dir, trust_remote_code)
        return TrainingData(tok, blocks)
    data = prepare_data(cfg, cache_dir, trust_remote_code)
    return TrainingData(data.tokenizer, TensorBlocks(pack_blocks(data.train, cfg.seq_len, "training split")))


def eval_stream(corpus: str, field: str | None, split: str, data_cfg: DataConfig | None, tokenizer,
                max_chars: int | None) -> torch.Tensor:
    """Token stream of a corpus split, with the same document split rule as training."""
    docs = load_documents(corpus, field=field, max_chars=max_chars)
    if split != "all":
        frac = data_cfg.val_fraction if data_cfg else 0.05
        seed = data_cfg.seed if data_cfg else 0
        train_docs, val_docs = split_documents(docs, frac, seed)
        docs = val_docs if split == "val" else train_docs
    return encode_documents(tokenizer, docs)
