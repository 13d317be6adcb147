"""A synthetic token shard folder of any size (random tokens, byte tokenizer, valid manifest), written by chunks
so a billion tokens never sit in memory: for the shard memory benchmark (bench/bench_shards_memory.py), never
kept in the repository."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qrobust.data.shard_format import (MANIFEST, SETTINGS, TOKENIZER_DIR, ShardSettings, build_manifest, index_file,
                                       split_entry, token_file)
from qrobust.data.tokenizer import build_tokenizer, tokenizer_fingerprint

CHUNK = 1 << 24  # tokens generated and written at a time


def _write_file(folder: Path, split: str, k: int, n_tokens: int, doc_tokens: int, rng, vocab: int) -> dict:
    with open(token_file(folder, split, k), "wb") as f:
        for start in range(0, n_tokens, CHUNK):
            f.write(rng.integers(0, vocab, size=min(CHUNK, n_tokens - start), dtype=np.uint16).tobytes())
    idx = np.append(np.arange(0, n_tokens, doc_tokens, dtype=np.uint64), np.uint64(n_tokens))
    np.save(index_file(folder, split, k), idx)
    return {"tokens": token_file(folder, split, k).name, "index": index_file(folder, split, k).name,
            "n_tokens": n_tokens, "n_documents": len(idx) - 1}


def write_synthetic_shards(folder: str | Path, n_train: int, n_val: int = 100_000, file_tokens: int = 1 << 28,
                           doc_tokens: int = 1024, seed: int = 0) -> dict:
    """Random byte-tokenizer ids (``uint16``): ``n_train`` train and ``n_val`` val tokens; returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer("byte", [])
    tok.save_pretrained(str(folder / TOKENIZER_DIR))
    settings = ShardSettings(corpus="synthetic", tokenizer="byte", shard_tokens=file_tokens)
    (folder / SETTINGS).write_text(json.dumps(settings.as_dict()))
    rng = np.random.default_rng(seed)
    splits = {}
    for split, total in (("train", n_train), ("val", n_val)):
        sizes = [min(file_tokens, total - s) for s in range(0, total, file_tokens)]
        splits[split] = split_entry([_write_file(folder, split, k, n, doc_tokens, rng, len(tok))
                                     for k, n in enumerate(sizes)])
    manifest = build_manifest(settings, {"fingerprint": tokenizer_fingerprint(folder / TOKENIZER_DIR),
                                         "vocab_size": len(tok), "eos_id": tok.eos_token_id}, splits)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
