"""The ``jsonl`` tracker: the step log at ``out/logs/<run>.jsonl`` that resume, reports and tests read.

One JSON object per line, ``{"step": s, <metrics>...}``. On open the log is cut back to the lines with
step <= resume_step (a line torn by a kill or a full disk is dropped too), so a resumed run's log equals an
uninterrupted one's. A failed write is one :class:`~qrobust.errors.WriteError` naming the log.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

from ...errors import write_error
from ...io.atomic import write_text
from .base import TrackerContext, present, register_tracker

WHAT = "training log"


def log_path(ctx: TrackerContext) -> Path:
    """Where the step log of ``ctx.run`` lives."""
    return ctx.logs / f"{ctx.run_file_name}.jsonl"


def line_step(line: str) -> int | None:
    """The step of one log line; None for a line cut short by a kill or a full disk."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def truncate_log(log: Path, step: int) -> None:
    """Keep the whole lines with step <= ``step`` (atomically); nothing to do when there is no log yet."""
    if not log.exists():
        return
    keep = [ln for ln in log.read_text().splitlines() if (s := line_step(ln)) is not None and s <= step]
    write_text(log, "".join(k + "\n" for k in keep), WHAT)


class JsonlTracker:
    """Appends one line per logged step; ``flush`` pushes the lines to the OS (at every checkpoint)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            truncate_log(self.path, resume_step)
            self.file = self.path.open("a")
        except OSError as e:
            raise _error(e, self.path) from None

    def _write(self, text: str | None) -> None:
        try:
            if text is None:
                self.file.flush()
            else:
                self.file.write(text)
        except OSError as e:
            raise _error(e, self.path) from None

    def log(self, step: int, metrics: Mapping[str, float | None]) -> None:
        self._write(json.dumps({"step": step, **present(metrics)}) + "\n")

    def flush(self) -> None:
        self._write(None)

    def close(self) -> None:
        if self.file.closed:
            return
        try:
            self._write(None)
        finally:
            with contextlib.suppress(OSError):  # a failed flush was raised above as a WriteError
                self.file.close()


def _error(exc: OSError, path: Path) -> BaseException:
    return write_error(exc, path, WHAT) or exc


@register_tracker("jsonl")
def open_jsonl(ctx: TrackerContext) -> JsonlTracker:
    return JsonlTracker(log_path(ctx), ctx.resume_step)
