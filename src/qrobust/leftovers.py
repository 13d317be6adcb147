"""Temporary files and folders a kill leaves behind, and their safe removal on the next run.

qrobust writes every file and folder under a temporary name first (``io.atomic``'s
files and folders, claim and probe files, layer-streaming state folders) and renames it into place,
so a kill can leave the temporary name behind, never a half result. Each temporary name carries its
writer, ``p<pid>-<host8>`` (``host8``: 8 hex digits of the host name's sha1), so the next run can tell
a leftover from a file another worker is writing right now:

* same host and the pid is dead: removed at once (the writer can never finish it);
* another host, or a name without a tag (older qrobust): removed only when nothing in it has changed
  for ``STALE_AFTER_S`` (a day), longer than any single write takes, so a live writer on another node
  sharing the folder is never disturbed.

A pid reused by an unrelated process only delays removal (it looks alive); it never removes a live file.
Only the exact names qrobust writes are matched (a user's ``.notes.tmp`` is not one), and callers look
only through the folders qrobust writes (a results folder's subfolders, a run's ``checkpoints``).
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

_T = r"(?:p(?P<pid>\d+)-(?P<host>[0-9a-f]{8})[.\-])?"  # the writer's tag (absent in older qrobust's names)
_R = r"[a-z0-9_]{8}"  # tempfile's random part
# the exact temporary names qrobust writes, nothing else: a user's own files are never touched
_FILE_PATTERNS = (re.compile(rf"^\..+?\.{_T}{_R}\.tmp$"),  # io.atomic files: records, figures, parquet export
                  re.compile(rf"^\.claim\.{_T}{_R}$"),  # a claim file before it is linked into place
                  re.compile(rf"^\.write-probe\.{_T}{_R}$"))  # the results folder's write probe
_DIR_PATTERNS = (re.compile(rf"^\..+\.tmp-{_T}{_R}$"),  # atomic_dir's folder being written
                 # atomic_dir's previous version of the folder, removed after the swap
                 re.compile(r"^\.(?P<final>.+)\.old-(?:p(?P<pid>\d+)-(?P<host>[0-9a-f]{8})|\d+)$"),
                 re.compile(rf"^qrobust-states-{_T}{_R}$"))  # layer streaming's disk tier


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


def abandoned(p: Path, m: re.Match, now: float | None = None) -> bool:
    """True when the writer of temporary ``p`` (its name matched as ``m``) is certainly gone (module doc)."""
    if m.group("pid") and m.group("host") == host_tag():
        return not pid_alive(int(m.group("pid")))
    try:
        return (now if now is not None else time.time()) - _last_change(p) > STALE_AFTER_S
    except OSError:
        return False


def _remove(p: Path, m: re.Match) -> None:
    final = m.groupdict().get("final")
    if final and not p.with_name(final).exists():  # killed between atomic_dir's two renames: the old
        try:  # version is the last whole one, so it is put back
            os.rename(p, p.with_name(final))
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


def _match(name: str, patterns: tuple[re.Pattern, ...]) -> re.Match | None:
    for r in patterns:
        m = r.match(name)
        if m:
            return m
    return None


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
            m = _match(name, _DIR_PATTERNS)
            if m:
                dirnames.remove(name)  # never look inside a temporary folder: it goes whole or stays whole
                if abandoned(here / name, m, now):
                    _remove(here / name, m)
                    removed.append(here / name)
        for name in filenames:
            m = _match(name, _FILE_PATTERNS)
            if m and abandoned(here / name, m, now):
                _remove(here / name, m)
                removed.append(here / name)
        if not recursive:
            break
    return removed
