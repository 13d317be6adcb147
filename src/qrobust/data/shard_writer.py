"""``qrobust data prepare``: tokenize a corpus once into memory-mappable token shards (format: :mod:`.shard_format`).

Documents are split train/val by :func:`~.blocks.split_documents` and encoded as a run that tokenizes the
corpus itself would encode them, so the same settings give the same token streams. Encoding runs in
``num_proc`` worker processes (``datasets`` ``map``), a window of documents at a time; each token file is
written under a temporary name and renamed, so a kill or a full disk never leaves half a file, and a re-run
skips the files already complete. ``manifest.json`` is written last.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from .. import leftovers
from ..errors import DataError, WriteError
from ..io.atomic import atomic_dir, atomic_file, write_text
from .blocks import split_documents
from .corpus import cap_documents, load_documents
from .shard_format import (MANIFEST, SETTINGS, TOKENIZER_DIR, ShardSettings, build_manifest, index_file,
                           read_manifest, split_entry, token_dtype, token_file)
from .tokenizer import build_tokenizer, load_tokenizer, tokenizer_fingerprint

WINDOW_CHARS = 1 << 25  # characters encoded per ``map`` call: bounds the memory of the encoded window


def write_tokens(f: BinaryIO, tokens: np.ndarray) -> None:
    """Append token ids to an open token file (one place every token byte goes through)."""
    f.write(tokens.tobytes())


def encode_batch(batch: dict[str, list], tokenizer: Any, eos: int) -> dict[str, list]:
    """``datasets`` map function: each document's ids followed by the end-of-text token."""
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"ids": [seq + [eos] for seq in ids]}


def encoded_windows(tokenizer: Any, docs: list[str], num_proc: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(int64 tokens, per-document lengths) of successive windows of ``docs``, in document order."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    start = 0
    while start < len(docs):
        end, chars = start, 0
        while end < len(docs) and (end == start or chars < WINDOW_CHARS):
            chars += len(docs[end])
            end += 1
        window = docs[start:end]
        procs = min(num_proc, len(window)) if num_proc > 1 else None
        ds = Dataset.from_dict({"text": window}).map(
            encode_batch, batched=True, num_proc=procs, remove_columns=["text"],
            fn_kwargs={"tokenizer": tokenizer, "eos": tokenizer.eos_token_id})
        col = ds.data.column("ids").combine_chunks()
        yield np.asarray(col.flatten(), dtype=np.int64), np.diff(np.asarray(col.offsets, dtype=np.int64))
        start = end


def _check_folder(out: Path, settings: ShardSettings) -> dict[str, Any] | None:
    """The manifest when ``out`` is already complete with these settings; None to (re)write; DataError when it
    holds something else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"'{out}' is a file, not a folder; choose another --out for the shards")
    s = out / SETTINGS
    if not s.is_file():
        if any(not p.name.startswith(".") for p in out.iterdir()):  # hidden: our own temporaries
            raise DataError(f"'{out}' is not empty and holds no qrobust shards; choose an empty or new --out")
        return None
    try:
        had = json.loads(s.read_text())
        if not isinstance(had, dict):
            raise ValueError(s)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise DataError(f"'{s}' is damaged (not JSON); delete the folder '{out}' and re-run") from None
    now = settings.as_dict()
    if had != now:
        k = min(k for k in set(had) | set(now) if had.get(k) != now.get(k))
        raise DataError(f"'{out}' holds shards made with other settings ({k} {had.get(k)!r} there, {now.get(k)!r} "
                        "asked); choose another --out, or delete that folder to rewrite it")
    return read_manifest(out) if (out / MANIFEST).is_file() else None


def _tokenizer(settings: ShardSettings, train_docs: list[str], out: Path, trust_remote_code: bool) -> Any:
    """The folder's tokenizer: made once (bpe trained on the train documents) and reloaded on a re-run."""
    folder = out / TOKENIZER_DIR
    if not folder.is_dir():
        docs = cap_documents(train_docs, settings.tokenizer_chars) if settings.tokenizer == "bpe" else train_docs
        tok = build_tokenizer(settings.tokenizer, docs, settings.vocab_size, trust_remote_code=trust_remote_code)
        if tok.eos_token_id is None:
            raise DataError(f"tokenizer '{settings.tokenizer}' has no end-of-text token; set eos_token in its "
                            "tokenizer_config.json")
        with atomic_dir(folder, "shard tokenizer") as tmp:
            tok.save_pretrained(str(tmp))
    return load_tokenizer(folder, trust_remote_code)


def _complete_files(out: Path, split: str, dtype: np.dtype) -> list[np.ndarray]:
    """Index arrays of the files of ``split`` already written whole, in order (a re-run skips them)."""
    done = []
    while index_file(out, split, len(done)).is_file():
        idx = np.load(index_file(out, split, len(done)))
        tokens = token_file(out, split, len(done))
        if not tokens.is_file() or tokens.stat().st_size != int(idx[-1]) * dtype.itemsize:
            break
        done.append(idx)
    return done


def _write_file(out: Path, split: str, k: int, parts: list[np.ndarray], lens: list[np.ndarray],
                dtype: np.dtype) -> np.ndarray:
    """Token file ``k`` of ``split`` from its parts, then its index: each appears whole or not at all."""
    idx = np.concatenate([[0], np.cumsum(np.concatenate(lens))]).astype(np.uint64)
    try:
        with atomic_file(token_file(out, split, k), "token shard") as tmp, open(tmp, "wb") as f:
            for part in parts:
                write_tokens(f, part.astype(dtype))
        with atomic_file(index_file(out, split, k), "token shard index") as tmp, open(tmp, "wb") as f:
            np.save(f, idx)
    except WriteError as e:  # the same line, with how this writer resumes
        raise WriteError(f"{str(e).split('; ')[0]}; free space (or fix the cause) and re-run the same 'qrobust data "
                         "prepare': complete shard files are kept", e.errno, e.strerror, e.filename) from None
    return idx


class _SplitWriter:
    """Cuts a split's encoded stream into files of at least ``shard_tokens`` tokens at document boundaries."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int, bar: Any):
        self.out, self.split, self.dtype, self.shard_tokens, self.bar = out, split, dtype, shard_tokens, bar
        self.files = _complete_files(out, split, dtype)
        self.parts: list[np.ndarray] = []
        self.lens: list[np.ndarray] = []
        self.pending = 0

    @property
    def docs_done(self) -> int:
        return sum(len(idx) - 1 for idx in self.files)

    def add(self, tokens: np.ndarray, lens: np.ndarray) -> None:
        ends = np.cumsum(lens)
        first = 0  # first document of this window not yet placed in a file
        while first < len(lens):
            base = int(ends[first - 1]) if first else 0
            last = int(np.searchsorted(ends, base + self.shard_tokens - self.pending, side="left"))
            stop = min(last + 1, len(lens))
            self.parts.append(tokens[base:int(ends[stop - 1])])
            self.lens.append(lens[first:stop])
            self.pending += int(ends[stop - 1]) - base
            first = stop
            if self.pending >= self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        idx = _write_file(self.out, self.split, len(self.files), self.parts, self.lens, self.dtype)
        self.files.append(idx)
        self.bar.update(len(idx) - 1)
        self.parts, self.lens, self.pending = [], [], 0


def _write_split(out: Path, split: str, docs: list[str], tokenizer: Any, settings: ShardSettings,
                 num_proc: int, bar: Any) -> dict[str, Any]:
    dtype = token_dtype(len(tokenizer))
    w = _SplitWriter(out, split, dtype, settings.shard_tokens, bar)
    bar.update(w.docs_done)
    for tokens, lens in encoded_windows(tokenizer, docs[w.docs_done:], num_proc):
        w.add(tokens, lens)
    w.flush()
    files = [{"tokens": token_file(out, split, k).name, "index": index_file(out, split, k).name,
              "n_tokens": int(idx[-1]), "n_documents": len(idx) - 1} for k, idx in enumerate(w.files)]
    return split_entry(files)


def write_shards(settings: ShardSettings, out: str | Path, num_proc: int = 1, progress: bool = True,
                 trust_remote_code: bool = False) -> dict[str, Any]:
    """Tokenize ``settings.corpus`` into the shard folder ``out`` and return its manifest (resumes; a folder
    already complete with these settings is returned as it is)."""
    from tqdm.auto import tqdm

    out = Path(out)
    done = _check_folder(out, settings)
    if done is not None:
        return done
    docs = load_documents(settings.corpus, field=settings.field, max_chars=settings.max_chars)
    train_docs, val_docs = split_documents(docs, settings.val_fraction, settings.seed)
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad corpus leaves no folder behind
    leftovers.clean(out, recursive=False)
    if not (out / SETTINGS).is_file():
        write_text(out / SETTINGS, json.dumps(settings.as_dict(), indent=1), "shard settings")
    if num_proc > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers fork after the tokenizer ran
    tok = _tokenizer(settings, train_docs, out, trust_remote_code)
    splits = {}
    with tqdm(total=len(docs), unit="doc", desc=f"shards {out.name}", disable=not progress) as bar:
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            splits[split] = _write_split(out, split, split_docs, tok, settings, num_proc, bar)
    manifest = build_manifest(settings, {"fingerprint": tokenizer_fingerprint(out / TOKENIZER_DIR),
                                         "vocab_size": len(tok), "eos_id": tok.eos_token_id}, splits)
    write_text(out / MANIFEST, json.dumps(manifest, indent=1), "shard manifest")
    return manifest
