"""The monitor inside Hugging Face's ``Trainer``: one line, ``trainer.add_callback(QrobustTrainerCallback(monitor))``.

Every process checks the model at start-up (a refusal stops all ranks before a step is taken); only the main
process (``state.is_world_process_zero``) evaluates, at the monitor's due steps, after the optimizer step:
the other ranks wait for it at their next collective, and the trajectory is unchanged because the monitor
leaves weights, RNG states and modes as found. Results go three ways: ``state.log_history`` (an entry shaped
like the Trainer's own: metrics, ``epoch``, ``step``), qrobust's trackers under ``<output_dir>/logs`` (the
``monitor.jsonl`` step log, with the LR used at every step so figures can draw the schedule), and one printed
line per evaluation.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..training.trackers import FanOut
from .sinks import echo, log_file, monitor_lines, open_sink, require_monitor, sharded_error


def check_unsharded(args: Any) -> None:
    """Refuse FSDP and DeepSpeed ZeRO-3 (sharded weights) at start-up, before any step."""
    if getattr(args, "fsdp", None):
        raise sharded_error("the HF Trainer's", "FSDP")
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # an older transformers without the helper: no ZeRO-3 through it either
        return
    if is_deepspeed_zero3_enabled():
        raise sharded_error("the HF Trainer's", "DeepSpeed ZeRO-3")


def optimizer_lr(optimizer: Any) -> float | None:
    """The learning rate of the optimizer's first parameter group (None when there is no optimizer yet)."""
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


class QrobustTrainerCallback(TrainerCallback):
    """Evaluate ``monitor`` (a :class:`qrobust.monitor.Monitor`, or anything with its interface) while an HF
    ``Trainer`` trains. ``log_dir``: the folder of the step log (default ``<args.output_dir>/logs``);
    ``trackers``: qrobust tracker names (``jsonl``, ``tensorboard``, ``wandb``); ``verbose``: print a line
    per evaluation."""

    def __init__(self, monitor: Any, log_dir: str | Path | None = None, trackers: Sequence[str] = ("jsonl",),
                 verbose: bool = True) -> None:
        self.monitor = require_monitor(monitor)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.trackers = tuple(trackers)
        self.verbose = verbose
        self.sink: FanOut | None = None
        self.lr: float | None = None

    def folder(self, args: Any) -> Path:
        return self.log_dir if self.log_dir is not None else Path(args.output_dir) / "logs"

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        check_unsharded(args)
        self.monitor.check(model)
        if not state.is_world_process_zero:
            return
        folder, step = self.folder(args), int(state.global_step)  # step > 0: resumed from a checkpoint
        if step > 0:
            self.monitor.restore(monitor_lines(log_file(folder), step))
        self.close()
        self.sink = open_sink(folder, self.trackers, step)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lr = optimizer_lr(optimizer)  # the LR this step is taken with (the scheduler moves it after)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self.sink is None:
            return
        step = int(state.global_step)
        if self.lr is not None:
            self.sink.log(step, {"lr": self.lr})
        if not self.monitor.due(step):
            return
        result = self.monitor.evaluate(model, step)
        metrics = dict(result.metrics)
        state.log_history.append({**metrics, **({"epoch": state.epoch} if state.epoch is not None else {}),
                                  "step": step})
        self.sink.log(step, metrics)
        self.sink.flush()
        if self.verbose:
            echo(step, metrics, result.alerts)

    def on_save(self, args, state, control, **kwargs):
        if self.sink is not None:
            self.sink.flush()  # the log is durable up to every checkpoint, as qrobust's own loop keeps it

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.close()
