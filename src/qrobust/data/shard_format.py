"""The on-disk format of a token shard folder (``qrobust data prepare``), shared by its writer and reader.

A folder ``DIR`` holds, per split (``train``, ``val``), numbered token files cut at document boundaries:

* ``<split>-NNNNN.bin``      raw little-endian token ids (``uint16`` when the vocabulary fits, else ``uint32``),
  every document followed by the end-of-text token: the split's stream is the files concatenated in order;
* ``<split>-NNNNN.idx.npy``  ``uint64`` offsets into that file: ``idx[i]`` is where document ``i`` starts and
  ``idx[-1]`` the file's token count (so a file is complete exactly when its size agrees);

plus ``tokenizer/`` (Hugging Face format), ``settings.json`` (written first: what the tokens depend on, so a
re-run resumes only with the same settings) and ``manifest.json`` (written last: the folder is complete).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

FORMAT = "qrobust.shards/1"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 25  # 32 Mi tokens: 64 MiB per uint16 file


@dataclass(frozen=True)
class ShardSettings:
    """Everything the token files depend on (worker count and progress bars do not change a byte).

    The defaults are those of :class:`~qrobust.config.DataConfig`, so the same settings give the same
    train/val token streams as a run that tokenizes the corpus itself."""

    corpus: str = "builtin"
    field: str | None = None
    max_chars: int | None = 4_000_000
    tokenizer: str = "bpe"  # "bpe", "byte" or a tokenizer folder
    vocab_size: int = 2048
    tokenizer_chars: int | None = None  # bpe: train on at most this many characters of the train documents
    val_fraction: float = 0.05
    seed: int = 0
    shard_tokens: int = DEFAULT_SHARD_TOKENS

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        for name in ("vocab_size", "shard_tokens", "max_chars", "tokenizer_chars"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise DataError(f"{name} must be a positive integer, got {v}")
        if self.tokenizer == "bpe" and self.vocab_size < 258:
            raise DataError(f"vocab_size must be at least 258 for a bpe tokenizer, got {self.vocab_size}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits in it, else ``uint32``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def token_file(folder: Path, split: str, k: int) -> Path:
    return folder / f"{split}-{k:05d}.bin"


def index_file(folder: Path, split: str, k: int) -> Path:
    return folder / f"{split}-{k:05d}.idx.npy"


def shard_set_id(manifest: dict[str, Any]) -> str:
    """A short id of the token streams (settings, tokenizer, file sizes): eval sets from shards carry it."""
    keep = {k: manifest[k] for k in ("settings", "tokenizer", "splits")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a complete shard folder; a missing or foreign folder is one DataError line."""
    p = Path(folder)
    if not p.is_dir():
        raise DataError(f"shard folder not found: '{p}'; write one with 'qrobust data prepare CORPUS --out {p}'")
    m = p / MANIFEST
    if not m.is_file():
        hint = ("its writing did not finish; re-run the same 'qrobust data prepare' to complete it"
                if (p / SETTINGS).is_file() else "write one with 'qrobust data prepare CORPUS --out DIR'")
        raise DataError(f"'{p}' is not a complete token shard folder (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(m.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"'{m}' is damaged (not JSON); re-run 'qrobust data prepare' into a new folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"'{m}' is not a qrobust shard manifest (format {got!r}, expected '{FORMAT}')")
    return manifest


def shard_settings(corpus: str, **options: Any) -> ShardSettings:
    """:class:`ShardSettings` from keyword options, an unknown one being one DataError line."""
    known = set(ShardSettings.__dataclass_fields__) - {"corpus"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown shard option '{unknown[0]}'; known: {', '.join(sorted(known))}")
    return ShardSettings(corpus=corpus, **options)


def build_manifest(settings: ShardSettings, tokenizer: dict[str, Any], splits: dict[str, dict[str, Any]]) -> dict:
    """The manifest of a complete folder; ``tokenizer``: fingerprint, vocab_size, eos_id; ``splits``: per split
    its ``files`` (tokens, index, n_tokens, n_documents) and totals."""
    return {"format": FORMAT, "dtype": token_dtype(tokenizer["vocab_size"]).name,
            "tokenizer": {**tokenizer, "folder": TOKENIZER_DIR},
            "corpus": settings.corpus, "val_fraction": settings.val_fraction, "seed": settings.seed,
            "settings": settings.as_dict(), "splits": splits,
            "n_tokens": sum(s["n_tokens"] for s in splits.values()),
            "n_documents": sum(s["n_documents"] for s in splits.values())}


def split_entry(files: list[dict[str, Any]]) -> dict[str, Any]:
    """A split's manifest entry from its files' entries."""
    return {"files": files, "n_tokens": sum(f["n_tokens"] for f in files),
            "n_documents": sum(f["n_documents"] for f in files)}
