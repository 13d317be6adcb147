"""The ``tensorboard`` tracker: event files under ``out/logs/tensorboard/<run>/``, one scalar series per
metric (``train/loss``, ``train/lr``, ``train/tokens_per_s``, ...).

A resumed run writes with ``purge_step = resume_step + 1``: TensorBoard then discards the events an earlier
attempt logged past the checkpoint it resumed from (the step-``resume_step`` point was logged before that
checkpoint was written and is kept), so the series read back equal an uninterrupted run's.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ...errors import write_error
from .base import TrackerContext, missing_package, present, register_tracker, series_name


def events_dir(ctx: TrackerContext) -> Path:
    """The event-file folder of ``ctx.run``."""
    return ctx.logs / "tensorboard" / ctx.run_file_name


class TensorBoardTracker:
    """A ``torch.utils.tensorboard.SummaryWriter`` fed one scalar per metric per step."""

    def __init__(self, folder: Path, resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_package("tensorboard", "tensorboard") from None
        try:
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=resume_step + 1)
        except OSError as e:
            raise (write_error(e, folder, "TensorBoard events") or e) from None

    def log(self, step: int, metrics: Mapping[str, float | None]) -> None:
        for key, value in present(metrics).items():
            self.writer.add_scalar(series_name(key), float(value), global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register_tracker("tensorboard")
def open_tensorboard(ctx: TrackerContext) -> TensorBoardTracker:
    return TensorBoardTracker(events_dir(ctx), ctx.resume_step)
