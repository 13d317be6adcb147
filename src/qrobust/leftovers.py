"""Temporary files and folders a kill leaves behind, and their safe removal on the next run.

qrobust writes every file and folder under a temporary name first (``atomic_write_text``,
``models.atomic_dir``, claim and probe files, layer-streaming state folders) and renames it into place,
so a kill can leave the temporary name behind, never a half result. Each temporary name carries its
writer, ``p<pid>-<host8>`` (``host8``: 8 hex digits of the host name's sha1), so the next run can tell
a leftover from a file another worker is writing right now:

* same host and the pid is dead: removed at once (the writer can never finish it);
* another host, or a name without a tag (older qrobust): removed only when nothing in it has changed
  for ``STALE_AFTER_S`` (a day), longer than any single write takes, so a live writer on another node
  sharing the folder is never disturbed.

A pid reused by an unrelated process only delays removal (it looks alive); it never removes a live file.
An ``.old-`` folder of ``atomic_dir`` is the previous complete version of a folder; if its writer died
between the two renames (the final name is missing) it is put back instead of removed.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
from pathlib import Path

STALE_AFTER_S = 24 * 3600.0

# (is a folder, name pattern) of every temporary name qrobust writes
_FILE_PATTERNS = (re.compile(r"^\..+\.tmp$"),  # atomic_write_text, figures, parquet export
                  re.compile(r"^\.claim\."),  # claim files before they are linked into place
                  re.compile(r"^\.write-probe\."))  # the results folder's write probe
_DIR_PATTERNS = (re.compile(r"^\..+\.tmp-"),  # atomic_dir's folder being written
                 re.compile(r"^\..+\.old-"),  # atomic_dir's previous version, removed after the swap
                 re.compile(r"^qrobust-states-"))  # layer streaming's disk tier
_OLD = re.compile(r"^\.(.+)\.old-")
_TAG = re.compile(r"(?:^|[.\-])p(\d+)-([0-9a-f]{8})(?=[.\-]|$)")


def host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def tag() -> str:
    """This process's mark in temporary names: ``p<pid>-<host8>``."""
    return f"p{os.getpid()}-{host_tag()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: assume alive
    return True


def _last_change(p: Path) -> float:
    """Newest mtime of ``p`` and, for a folder, of what is directly inside (a file grows as it is written)."""
    t = p.lstat().st_mtime
    if p.is_dir() and not p.is_symlink():
        for q in p.iterdir():
            try:
                t = max(t, q.lstat().st_mtime)
            except FileNotFoundError:
                continue
    return t


def abandoned(p: Path, now: float | None = None) -> bool:
    """True when the writer of temporary ``p`` is certainly gone (see the module doc)."""
    m = _TAG.search(p.name)
    if m and m.group(2) == host_tag():
        return not pid_alive(int(m.group(1)))
    try:
        return (now if now is not None else time.time()) - _last_change(p) > STALE_AFTER_S
    except OSError:
        return False


def _remove(p: Path) -> None:
    m = _OLD.match(p.name)
    if m and p.is_dir():
        final = p.with_name(m.group(1))
        if not final.exists():  # killed between atomic_dir's two renames: the old version is the last whole one
            try:
                os.rename(p, final)
                return
            except OSError:
                pass
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def clean(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove abandoned temporary files and folders under ``folder`` (only directly in it unless
    ``recursive``); returns what was removed."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            p = here / name
            if any(r.search(name) for r in _DIR_PATTERNS):
                dirnames.remove(name)  # never look inside a temporary folder: it goes whole or stays whole
                if abandoned(p, now):
                    _remove(p)
                    removed.append(p)
        for name in filenames:
            p = here / name
            if any(r.search(name) for r in _FILE_PATTERNS) and abandoned(p, now):
                _remove(p)
                removed.append(p)
        if not recursive:
            break
    return removed
