"""The offline default corpus: real text from the installed Python standard library.

Two kinds of document, interleaved so that any prefix holds both prose and code:
- documentation: every topic of ``pydoc_data.topics`` (the language reference shipped with Python);
- sources: every ``.py`` file of the standard library, sorted by relative path, tests excluded.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "turtledemo"}


def _doc_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python builds
        return []
    return [topics[k] for k in sorted(topics)]


def _source_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        out.append(p)
    return out


def builtin_documents(max_chars: int | None = None) -> list[str]:
    """Deterministic documents from this interpreter's standard library, capped at ``max_chars``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs_iter = iter(_doc_topics())
    src_iter = iter(_source_files(root))
    out: list[str] = []
    total = 0
    exhausted = 0
    while exhausted < 2:
        exhausted = 0
        for it, is_file in ((docs_iter, False), (src_iter, True)):
            item = next(it, None)
            if item is None:
                exhausted += 1
                continue
            text = item.read_text(encoding="utf-8", errors="replace") if is_file else item
            text = text.strip()
            if not text:
                continue
            if max_chars is not None and total + len(text) > max_chars:
                text = text[: max_chars - total]
            out.append(text)
            total += len(text)
            if max_chars is not None and total >= max_chars:
                return out
    return out
