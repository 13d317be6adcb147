"""The one atomic writer: every file and folder qrobust writes appears whole or not at all.

A file is written under a temporary name in its own folder (the name carries the writer's pid and host, so
``leftovers.clean`` can tell an abandoned temporary from a live one), flushed and fsynced, then renamed over
the target. A folder is filled under a temporary name and renamed into place; an earlier folder of that name
is kept until the new one is in place. Every write gets the same permissions (what the umask allows, as
``open`` would: results and checkpoints on shared disks stay readable), and a write that fails (disk full,
read-only) removes its temporary copy, leaves the earlier target untouched and becomes one
:class:`~qrobust.errors.WriteError` naming what could not be written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import write_error
from ..leftovers import tag


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path, what: str = "file") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (parquet, say); renamed over
    ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{tag()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(e, path, what) from None
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600
        yield tmp
        with open(tmp, "rb+") as f:  # whatever wrote it, its bytes are on disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        err = write_error(e, path, what)
        if err is not None:
            raise err from None
        raise


def write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """``data`` to ``path``, atomically."""
    with atomic_file(path, what) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: Path, text: str, what: str = "file") -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    write_bytes(path, text.encode("utf-8"), what)


class atomic_dir:  # noqa: N801 - used like a function: ``with atomic_dir(final) as tmp:``
    """Fill a folder under a temporary name, then rename it into place: a kill never leaves half a folder,
    and an earlier folder of that name stays until the new one has replaced it."""

    def __init__(self, final: Path, what: str = "folder"):
        self.final = Path(final)
        self.what = what

    def __enter__(self) -> Path:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-{tag()}-", dir=self.final.parent))
        except OSError as e:
            raise write_error(e, self.final, self.what) from None
        os.chmod(self.tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            err = write_error(exc, self.final, self.what)
            if err is not None:
                raise err from None
            return
        try:
            self._move_into_place()
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise write_error(e, self.final, self.what) from None

    def _move_into_place(self) -> None:
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{tag()}")
            os.replace(self.final, old)
            try:
                os.replace(self.tmp, self.final)
            except BaseException:
                os.replace(old, self.final)  # put the earlier folder back: a failed rewrite loses nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
