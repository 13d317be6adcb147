"""The training loop's side of the ΔQ L monitor (``monitor:`` in a training config): build and check it before
any step, evaluate it when due, rebuild its history on resume.

Distributed runs: **rank 0 gathers**. Every rank builds the monitor's blocks and runs its start-up checks (a
refusal is then raised by all ranks together, none is left waiting at a barrier), but only rank 0 evaluates:
under DDP it evaluates its own replica (``ts.base``: full weights on every rank); under FSDP every rank joins
the collective that gathers the full weights into rank 0's host copy (``ts.host``), which rank 0 evaluates.
Then all ranks meet at a barrier. The monitor runs between steps, outside the throughput meter's timing,
and leaves weights, RNG states and modes as found, so the trajectory is bit-identical to one without it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..models import model_config
from ..monitor import Monitor
from ..monitor.heldout import tokenizer_fp
from .flops import meta_model
from .parallel import gather_weights
from .runtime import Runtime
from .saving import TrainedState
from .trackers import FanOut


def build_monitor(cfg: TrainConfig, tokenizer: Any) -> Monitor | None:
    """The run's monitor, checked on the model's structure (built on the meta device: no weights yet), or
    None without a ``monitor:`` block. Raises the one-line refusal before any checkpoint or config is written."""
    if cfg.monitor is None:
        return None
    mon = Monitor.for_training(cfg.monitor, cfg.data, tokenizer, tokenizer_fp(tokenizer))
    cls, config = model_config(cfg.model.arch, cfg.model.preset, len(tokenizer), cfg.data.seq_len,
                               cfg.model.overrides)
    mon.check(meta_model(cls, config))
    return mon


def restore_history(monitor: Monitor | None, out: Path, run: str, rt: Runtime) -> None:
    """Rebuild the monitor's history from the run's step log (already cut back to the resume step by the
    jsonl tracker), so a resumed run fires the alerts an uninterrupted one fires."""
    if monitor is None or not rt.is_main:
        return
    log = Path(out) / "logs" / f"{run}.jsonl"
    lines = []
    if log.is_file():
        for text in log.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:  # a line torn by a kill (the tracker dropped those; be safe anyway)
                continue
    monitor.restore(lines)


def monitor_step(monitor: Monitor | None, ts: TrainedState, step: int, trackers: FanOut, rt: Runtime) -> None:
    """Evaluate when due and log the metrics as one line of ``step`` (before that step's checkpoint flushes the
    trackers, so a resume keeps it). A collective under FSDP: every rank calls it."""
    if monitor is None or not monitor.due(step):
        return
    gather_weights(ts.base, ts.host, rt)  # FSDP: full weights into rank 0's host copy; otherwise nothing
    model = ts.host if rt.mode == "fsdp" else ts.base
    if rt.is_main:
        trackers.log(step, monitor.evaluate(model, step).metrics)
    rt.barrier()
