"""User-facing errors: one clear line naming what is wrong and what to do.

Everything the CLI should print without a traceback raises :class:`QrobustError`.
"""
from __future__ import annotations

import errno
import os
import re


class QrobustError(Exception):
    """An error caused by user input or environment, printed as one line by the CLI."""


class ConfigError(QrobustError):
    """A configuration value is unknown, missing or of the wrong type."""


class DataError(QrobustError):
    """A corpus cannot be read, is empty, or is too short."""


class CheckpointError(QrobustError):
    """A checkpoint path is missing, unsafe, or holds invalid weights."""


class QrobustWarning(UserWarning):
    """Something was skipped or will be redone (an unreadable record, say); the CLI prints it as one line."""


class WriteError(QrobustError, OSError):
    """A file or folder could not be written (disk full, read-only, no permission).

    Raised by the atomic writer (:mod:`qrobust.io.atomic`)
    after removing their temporary copy, so whatever was written before stays complete. Also an ``OSError``
    (errno kept) so code that handles write failures as OS errors keeps working."""

    def __init__(self, message: str, errno_: int | None = None, reason: str | None = None,
                 filename: str | None = None):
        super().__init__(message)
        self.errno, self.strerror, self.filename = errno_, reason, filename

    def __str__(self) -> str:
        return str(self.args[0])


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
RESUME_HINT = "training resumes from the last complete checkpoint, a sweep from its last record"


def _os_reason(exc: BaseException) -> tuple[int | None, str] | None:
    """(errno, reason) of an OS-level write failure: an ``OSError`` or safetensors' ``SafetensorError``
    (whose text carries the OS error: "I/O error: No space left on device (os error 28)"); None otherwise."""
    if isinstance(exc, OSError):
        return exc.errno, exc.strerror or str(exc) or type(exc).__name__
    if type(exc).__name__ != "SafetensorError":
        return None
    text = str(exc).splitlines()[0] if str(exc) else "safetensors write failed"
    code = re.search(r"\(os error (\d+)\)|code: (\d+)", text)
    num = int(code.group(1) or code.group(2)) if code else None
    if num is None:  # no number: recognise the OS's own wording
        num = next((n for n in (*_NO_SPACE, *_NOT_WRITABLE) if os.strerror(n) in text), None)
    reason = os.strerror(num) if num is not None else re.sub(r"^Error while serializing:\s*", "", text)
    return num, reason


def write_error(exc: BaseException, path: str | os.PathLike, what: str) -> WriteError | None:
    """The one-line :class:`WriteError` for a failed write of ``what`` at ``path``; None if ``exc`` is not a
    write failure (a bug or an interrupt must surface as itself)."""
    if isinstance(exc, WriteError):
        return exc
    got = _os_reason(exc)
    if got is None:
        return None
    num, reason = got
    if num in _NO_SPACE:
        fix = "free space"
    elif num in _NOT_WRITABLE:
        fix = "make the folder writable"
    else:
        fix = "fix the cause"
    return WriteError(f"cannot write {what} '{path}': {reason}; {fix} and re-run: {RESUME_HINT}",
                      num, reason, str(path))
