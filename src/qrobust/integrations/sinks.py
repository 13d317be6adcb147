"""What the trainer callbacks share: where monitor results go (qrobust's own trackers, so an HF or Lightning
run gets the same JSONL step log, TensorBoard series and wandb history as a qrobust run), the one printed
line per evaluation, and the monitor protocol the callbacks accept.

The callbacks accept any object with ``check`` / ``due`` / ``evaluate`` / ``history`` / ``restore`` (the
:class:`qrobust.monitor.Monitor` interface), so a user can pass a ready monitor, and tests a stand-in.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

import torch

from ..data.blocks import pack_blocks, take_blocks
from ..data.tokenizer import encode_documents
from ..errors import ConfigError, DataError
from ..training.trackers import FanOut, TrackerContext, check_trackers, open_trackers

RUN = "monitor"  # the step log is <log_dir>/monitor.jsonl, TensorBoard events <log_dir>/tensorboard/monitor
PREFIX = "monitor/"


@runtime_checkable
class MonitorLike(Protocol):
    """The part of :class:`qrobust.monitor.Monitor` a trainer callback calls."""

    history: list[Any]

    def check(self, model: Any) -> None: ...

    def due(self, step: int) -> bool: ...

    def evaluate(self, model: Any, step: int) -> Any: ...

    def restore(self, lines: list[dict]) -> None: ...


def require_monitor(monitor: Any) -> MonitorLike:
    """``monitor`` itself when it has the monitor interface; otherwise one line saying how to make one."""
    missing = [m for m in ("check", "due", "evaluate", "restore") if not callable(getattr(monitor, m, None))]
    if missing:
        raise ConfigError(f"the callback needs a qrobust monitor (qrobust.monitor.Monitor(cfg, eval_blocks) or "
                          f"make_monitor(...)); got {type(monitor).__name__} without {', '.join(missing)}")
    return monitor


def sharded_error(trainer: str, scheme: str) -> ConfigError:
    """The refusal for sharded weights: the callbacks evaluate on the main process alone, which holds only a
    shard of them (qrobust's own loop gathers them: use it, or DDP, for a monitored run)."""
    return ConfigError(f"the qrobust monitor callback evaluates on the main process alone, which holds only a "
                       f"shard of the weights under {trainer} {scheme}; train with DDP (or one process), or use "
                       "qrobust's own training loop with a monitor: block, which gathers them")


@dataclass(frozen=True)
class FolderContext(TrackerContext):
    """A tracker context whose logs go to ``folder`` itself (a trainer's ``<output_dir>/logs`` or the user's
    ``log_dir``) instead of ``out/logs``."""

    folder: Path = Path("logs")

    @property
    def logs(self) -> Path:
        return Path(self.folder)


def open_sink(folder: Path, trackers: Sequence[str], resume_step: int, project: str = "qrobust-monitor") -> FanOut:
    """The named qrobust trackers writing under ``folder`` for the run ``monitor``; lines past
    ``resume_step`` (an earlier attempt's, after the checkpoint the trainer resumed from) are dropped."""
    check_trackers(trackers)
    ctx = FolderContext(out=Path(folder), run=RUN, project=project, resume_step=resume_step, folder=Path(folder))
    return open_trackers(trackers, ctx)


def log_file(folder: Path) -> Path:
    """The JSONL step log the ``jsonl`` tracker writes under ``folder``."""
    return Path(folder) / f"{RUN}.jsonl"


def monitor_lines(path: Path, up_to: int) -> list[dict]:
    """The logged monitor lines (those with a ``monitor/`` key) with step <= ``up_to``: what
    ``Monitor.restore`` rebuilds its history (and so its alert windows) from on resume."""
    if not Path(path).is_file():
        return []
    out = []
    for text in Path(path).read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:  # a line torn by a kill
            continue
        if isinstance(line, dict) and int(line.get("step", -1)) <= up_to and any(k.startswith(PREFIX) for k in line):
            out.append(line)
    return out


def variant_labels(metrics: Mapping[str, float]) -> list[str]:
    """The evaluated variant labels, in logged order (``monitor/dq/<label>`` keys)."""
    return [k[len(PREFIX + "dq/"):] for k in metrics if k.startswith(PREFIX + "dq/")]


def summary_line(step: int, metrics: Mapping[str, float]) -> str:
    """One line per evaluation: ``monitor step 40: loss_fp 5.2100 | rtn-w3g128 ΔQ L +3.10% [+2.80, +3.40] | 0.41 s``."""
    parts = [f"monitor step {step}:"]
    if (fp := metrics.get(PREFIX + "loss_fp")) is not None:
        parts.append(f"loss_fp {fp:.4f}")
    for label in variant_labels(metrics):
        dq = metrics[f"{PREFIX}dq/{label}"]
        lo, hi = metrics.get(f"{PREFIX}dq_low/{label}"), metrics.get(f"{PREFIX}dq_high/{label}")
        band = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None and hi is not None else ""
        parts.append(f"| {label} ΔQ L {100 * dq:+.2f}%{band}")
    if (sec := metrics.get(PREFIX + "seconds")) is not None:
        parts.append(f"| {sec:.2f} s")
    return " ".join(parts)


def alert_line(step: int, metric: str, metrics: Mapping[str, float]) -> str:
    """The line of one fired alert: its metric and the relative rise the monitor logged for it."""
    rise = metrics.get(f"{PREFIX}alert/{metric}")
    return f"monitor ALERT at step {step}: {metric}" + (f" rose by {100 * rise:.1f}%" if rise is not None else "")


def echo(step: int, metrics: Mapping[str, float], alerts: Iterable[str], stream: TextIO | None = None) -> None:
    """Print the evaluation's line, then one ``monitor ALERT`` line per alert that fired (``alerts``: the
    metrics whose rule fired, as ``MonitorResult.alerts`` lists them)."""
    out = stream or sys.stdout
    print(summary_line(step, metrics), file=out, flush=True)
    for metric in alerts:
        print(alert_line(step, metric, metrics), file=out, flush=True)


def make_monitor(cfg: Any, eval_blocks: Any, calibration: Any = None) -> MonitorLike:
    """A :class:`qrobust.monitor.Monitor` from a ``MonitorConfig`` or its dict (``{"every": 50, "bits": [3]}``)
    and a tensor of held-out token blocks [n, T]; imported here so the callbacks work with any monitor."""
    from ..config import MonitorConfig  # the monitor's own modules, imported only when one is made here
    from ..monitor import Monitor

    if not isinstance(cfg, MonitorConfig):
        from ..config import parse_config
        cfg = parse_config(MonitorConfig, dict(cfg or {}), "monitor config")
    return Monitor(cfg, eval_blocks, calibration)


def text_blocks(tokenizer: Any, texts: Sequence[str], seq_len: int, n_blocks: int) -> torch.Tensor:
    """The first ``n_blocks`` held-out blocks of ``seq_len`` tokens from ``texts`` (each text followed by the
    end-of-text token, packed as qrobust packs a validation split): the eval set for :func:`make_monitor`."""
    blocks = pack_blocks(encode_documents(tokenizer, list(texts)), seq_len, "monitor texts")
    if blocks.shape[0] < n_blocks:
        raise DataError(f"the monitor texts give {blocks.shape[0]} blocks of {seq_len} tokens, fewer than the "
                        f"{n_blocks} asked for; pass more held-out text or lower n_blocks")
    return take_blocks(blocks, n_blocks)
