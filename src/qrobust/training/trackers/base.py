"""The tracker contract: where a training run's step metrics go (the JSONL step log, TensorBoard, wandb).

A tracker is chosen by name (``logging: [jsonl, tensorboard, wandb]`` in the training config) from
:data:`TRACKERS`, a registry of factories ``factory(ctx) -> Tracker``; adding one is one module with
``@register_tracker("name")``. :func:`open_trackers` opens every named tracker and returns one tracker that
fans out to all of them, so the loop calls ``log`` / ``flush`` / ``close`` once whatever was chosen.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ...errors import ConfigError, QrobustError
from ...names import safe_name
from ...registries import Registry

TRACKERS_EXTRA = "pip install 'qrobust[trackers]'"


@runtime_checkable
class Tracker(Protocol):
    """Receives the metrics of each optimizer step of one run."""

    def log(self, step: int, metrics: Mapping[str, float | None]) -> None:
        """Record ``metrics`` (name -> number; None values are skipped) at optimizer step ``step``."""

    def flush(self) -> None:
        """Make everything logged so far durable; called at every checkpoint."""

    def close(self) -> None:
        """Flush and release files, threads or processes; the tracker is not used afterwards."""


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker needs to know about the run it records.

    ``out``: the training output folder; ``run``: the run name (``main`` or a branch); ``project``: the
    config's name; ``config``: the config dump; ``resume_step``: the step training resumes from (0 for a
    fresh run, a branch's from_step for a fresh branch): whatever was logged after it is dropped, so a
    resumed run's series equal an uninterrupted one's."""

    out: Path
    run: str
    project: str
    config: Mapping[str, Any] = field(default_factory=dict)
    resume_step: int = 0

    @property
    def logs(self) -> Path:
        """The folder every tracker writes under: ``out/logs``."""
        return Path(self.out) / "logs"

    @property
    def run_file_name(self) -> str:
        """The run name checked to be a safe file/folder name."""
        return safe_name(self.run, "run name")


TrackerFactory = Callable[[TrackerContext], Tracker]
TRACKERS: Registry[TrackerFactory] = Registry("tracker", ConfigError)


def register_tracker(name: str) -> Callable[[TrackerFactory], TrackerFactory]:
    """Decorator registering ``factory(ctx) -> Tracker`` under ``name`` (a ``logging:`` entry)."""
    return TRACKERS.register(name)


def series_name(key: str) -> str:
    """The name of a metric's series in a dashboard: ``loss`` -> ``train/loss``; a key that already has a
    group (``monitor/sharpness``) keeps it."""
    return key if "/" in key else f"train/{key}"


def present(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The metrics that have a value (an MFU with no known peak is None and is left out)."""
    return {k: v for k, v in metrics.items() if v is not None}


def missing_package(tracker: str, package: str) -> QrobustError:
    """The one-line error for a tracker whose package is not installed."""
    return QrobustError(f"tracker '{tracker}' needs the {package} package: {TRACKERS_EXTRA} "
                        f"(or remove '{tracker}' from logging:)")


class FanOut:
    """One tracker that passes every call on to several, in order."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, step: int, metrics: Mapping[str, float | None]) -> None:
        for t in self.trackers:
            t.log(step, metrics)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def close(self) -> None:
        """Close all of them, even when one fails; the first failure is raised after the rest closed."""
        first: BaseException | None = None
        for t in self.trackers:
            try:
                t.close()
            except BaseException as e:  # noqa: BLE001 - re-raised below once the others are closed
                first = first or e
        if first is not None:
            raise first

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_trackers(names: Sequence[str]) -> None:
    """Fail early (before any data is prepared) on an unknown tracker name: one line listing the known ones."""
    for name in names:
        TRACKERS.lookup(name)


def open_trackers(names: Sequence[str], ctx: TrackerContext) -> FanOut:
    """Open the trackers named in ``names`` (each once, in order) for the run in ``ctx``.

    Every name is looked up before any is opened, so an unknown one is one error line listing the known
    ones and nothing was created; if a tracker fails to open, those already open are closed again."""
    factories = [TRACKERS.lookup(n) for n in dict.fromkeys(names)]
    opened: list[Tracker] = []
    try:
        for make in factories:
            opened.append(make(ctx))
    except BaseException:
        with contextlib.suppress(Exception):
            FanOut(opened).close()
        raise
    return FanOut(opened)
