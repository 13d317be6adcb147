"""Corpus sources by spec string, through a registry (name -> loader).

Spec strings:
- ``builtin``                         Python standard library docs + sources (offline default)
- ``text:PATH``                       a text file (documents = blank-line separated paragraphs) or a folder
                                      (one document per file, sorted by path)
- ``jsonl:PATH``                      one JSON object per line, text in ``field`` (default ``text``)
- ``hf:NAME[:CONFIG][:SPLIT]``        a Hugging Face hub dataset (network; split default ``train``)
- ``hf-disk:PATH[#SPLIT]``            a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
                                      (split default ``train``, else the first split)
- ``parquet:PATH``                    a parquet file, folder or glob
A bare path is recognised by its shape (folder with ``dataset_info.json`` / ``dataset_dict.json`` ->
hf-disk, ``.jsonl`` -> jsonl, ``.parquet`` -> parquet, anything else -> text).
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..registries import Registry
from ..errors import DataError
from .builtin import builtin_documents


@dataclass(frozen=True)
class CorpusSpec:
    kind: str
    target: str = ""
    config: str | None = None
    split: str | None = None
    field: str | None = None
    max_chars: int | None = None

    def describe(self) -> str:
        parts = [self.kind] + [p for p in (self.target, self.config, self.split) if p]
        return ":".join(parts)


Loader = Callable[[CorpusSpec], list[str]]
SOURCES: Registry[Loader] = Registry("corpus source", DataError)
register_source = SOURCES.register


def _sniff(path: str) -> str:
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                       or (p / "state.json").exists()):
        return "hf-disk"
    if p.suffix == ".jsonl":
        return "jsonl"
    if p.suffix == ".parquet":
        return "parquet"
    return "text"


def parse_corpus_spec(spec: str, field: str | None = None, max_chars: int | None = None) -> CorpusSpec:
    spec = spec.strip()
    if not spec:
        raise DataError("empty corpus spec; use 'builtin', 'text:PATH', 'jsonl:PATH', 'hf:NAME' or 'hf-disk:PATH'")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SOURCES:
        if spec in SOURCES:
            return CorpusSpec(kind=spec, field=field, max_chars=max_chars)
        # a bare path (Windows drive letters are not a concern here)
        return CorpusSpec(kind=_sniff(spec), target=spec, field=field, max_chars=max_chars)
    if kind == "hf":
        name, _, tail = rest.partition(":")
        config, _, split = tail.partition(":")
        return CorpusSpec("hf", name, config or None, split or None, field, max_chars)
    if kind == "hf-disk" and "#" in rest:
        path, _, split = rest.rpartition("#")
        return CorpusSpec(kind, path, split=split or None, field=field, max_chars=max_chars)
    return CorpusSpec(kind, rest, field=field, max_chars=max_chars)


def cap_documents(docs: list[str], max_chars: int | None) -> list[str]:
    """The leading documents holding ``max_chars`` characters (the last one cut), all when None."""
    if max_chars is None:
        return docs
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        d = d[: max_chars - total]
        out.append(d)
        total += len(d)
    return out


def load_documents(spec: CorpusSpec | str, field: str | None = None, max_chars: int | None = None) -> list[str]:
    """Load a corpus as a list of non-empty documents in a deterministic order."""
    if isinstance(spec, str):
        spec = parse_corpus_spec(spec, field=field, max_chars=max_chars)
    loader = SOURCES.get(spec.kind)
    if loader is None:
        raise DataError(f"unknown corpus kind '{spec.kind}'; known: {', '.join(sorted(SOURCES))}")
    docs = [d for d in loader(spec) if d and d.strip()]
    docs = cap_documents(docs, spec.max_chars)
    if not docs:
        raise DataError(f"corpus '{spec.describe()}' is empty: it holds no non-blank text")
    return docs


def _require_path(spec: CorpusSpec) -> Path:
    p = Path(spec.target)
    if not spec.target or not p.exists():
        raise DataError(f"corpus path not found: '{spec.target}' (from spec '{spec.describe()}')")
    return p


@register_source("builtin")
def _builtin(spec: CorpusSpec) -> list[str]:
    return builtin_documents(spec.max_chars)


@register_source("text")
def _text(spec: CorpusSpec) -> list[str]:
    p = _require_path(spec)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        return [f.read_text(encoding="utf-8", errors="replace") for f in files]
    text = p.read_text(encoding="utf-8", errors="replace")
    return [para for para in text.replace("\r\n", "\n").split("\n\n") if para.strip()]


def iter_jsonl(p: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; a malformed line is one error line."""
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{i}: not valid JSON ({e.msg}); each line must be one JSON object") from None


@register_source("jsonl")
def _jsonl(spec: CorpusSpec) -> list[str]:
    p = _require_path(spec)
    key = spec.field or "text"
    docs = []
    for i, obj in iter_jsonl(p):
        if not isinstance(obj, dict) or key not in obj:
            raise DataError(f"{p}:{i}: no field '{key}'; set the text field with 'field' (--field)")
        val = obj[key]
        if not isinstance(val, str):
            raise DataError(f"{p}:{i}: field '{key}' is {type(val).__name__}, expected a string")
        docs.append(val)
    return docs


def _column(ds, spec: CorpusSpec) -> list[str]:
    key = spec.field or "text"
    if key not in ds.column_names:
        raise DataError(f"dataset '{spec.describe()}' has no column '{key}' (columns: "
                        f"{', '.join(ds.column_names)}); set 'field'")
    return [str(x) for x in ds[key]]


def _pick_split(obj, spec: CorpusSpec):
    from datasets import DatasetDict
    if isinstance(obj, DatasetDict):
        split = spec.split or ("train" if "train" in obj else sorted(obj)[0])
        if split not in obj:
            raise DataError(f"dataset '{spec.describe()}' has no split '{split}' (splits: {', '.join(obj)})")
        return obj[split]
    return obj


@register_source("hf-disk")
def _hf_disk(spec: CorpusSpec) -> list[str]:
    from datasets import load_from_disk
    p = _require_path(spec)
    try:
        obj = load_from_disk(str(p))
    except FileNotFoundError as e:
        raise DataError(f"'{p}' is not a dataset folder written by save_to_disk ({e})") from None
    return _column(_pick_split(obj, spec), spec)


@register_source("parquet")
def _parquet(spec: CorpusSpec) -> list[str]:
    from datasets import load_dataset
    p = Path(spec.target)
    files = sorted(glob.glob(str(p / "**" / "*.parquet"), recursive=True)) if p.is_dir() else sorted(glob.glob(spec.target))
    if not files:
        raise DataError(f"no parquet files found at '{spec.target}'")
    ds = load_dataset("parquet", data_files=files, split="train")
    return _column(ds, spec)


@register_source("hf")
def _hf_hub(spec: CorpusSpec) -> list[str]:
    from datasets import load_dataset
    try:
        ds = load_dataset(spec.target, spec.config, split=spec.split or "train")
    except Exception as e:  # network, auth, unknown name: all user-facing
        raise DataError(f"could not load Hugging Face dataset '{spec.describe()}': "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return _column(ds, spec)
