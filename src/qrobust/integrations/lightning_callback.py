"""The monitor inside a Lightning ``Trainer``: one line, ``Trainer(callbacks=[QrobustLightningCallback(monitor)])``.

Every process checks the model at ``on_train_start`` (a refusal stops all ranks before a step); only global
rank 0 evaluates, after the optimizer step of each due global step (once per step, however many micro-batches
accumulate into it). The evaluated model is the Hugging Face model inside the ``LightningModule``: the attribute
named by ``model_attr``, else the module itself when it has a ``config`` (it is the HF model), else
``pl_module.model``. Results go to ``pl_module.log_dict`` (so the user's Lightning loggers get them), to
qrobust's trackers under ``<default_root_dir>/logs`` (``monitor.jsonl``, with the LR of every step) and one
printed line per evaluation.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from ..errors import ConfigError
from ..training.trackers import FanOut
from .hf_trainer import optimizer_lr
from .sinks import echo, log_file, monitor_lines, open_sink, require_monitor, sharded_error


def inner_model(pl_module: Any, attr: str | None) -> Any:
    """The model the monitor evaluates (see the module docstring); one line when it is not there."""
    if attr is None:
        if hasattr(pl_module, "config"):
            return pl_module
        attr = "model"
    model = getattr(pl_module, attr, None)
    if model is None:
        raise ConfigError(f"{type(pl_module).__name__} has no attribute '{attr}' holding the model to monitor; "
                          "pass model_attr=<the attribute name> to QrobustLightningCallback")
    return model


def check_unsharded(strategy: Any) -> None:
    """Refuse Lightning's FSDP and DeepSpeed ZeRO-3 strategies (sharded weights) before any step."""
    name = type(strategy).__name__
    if "FSDP" in name:
        raise sharded_error("Lightning's", name)
    if getattr(strategy, "zero_stage_3", False):
        raise sharded_error("Lightning's", f"{name} (ZeRO stage 3)")


class QrobustLightningCallback(Callback):
    """Evaluate ``monitor`` (a :class:`qrobust.monitor.Monitor`, or anything with its interface) while a
    Lightning ``Trainer`` trains. ``log_dir``: the folder of the step log (default
    ``<trainer.default_root_dir>/logs``); ``model_attr``: the attribute holding the HF model; ``trackers``:
    qrobust tracker names; ``verbose``: print a line per evaluation."""

    def __init__(self, monitor: Any, log_dir: str | Path | None = None, model_attr: str | None = None,
                 trackers: Sequence[str] = ("jsonl",), verbose: bool = True) -> None:
        self.monitor = require_monitor(monitor)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.model_attr = model_attr
        self.trackers = tuple(trackers)
        self.verbose = verbose
        self.sink: FanOut | None = None
        self.lr: float | None = None
        self.last_step = -1  # the last global step handled (micro-batches of one step share it)

    def on_train_start(self, trainer, pl_module) -> None:
        check_unsharded(trainer.strategy)
        self.monitor.check(inner_model(pl_module, self.model_attr))
        self.last_step = int(trainer.global_step)
        if not trainer.is_global_zero:
            return
        folder = self.log_dir if self.log_dir is not None else Path(trainer.default_root_dir) / "logs"
        if self.last_step > 0:  # resumed from a checkpoint: the history its alert windows need
            self.monitor.restore(monitor_lines(log_file(folder), self.last_step))
        self.close()
        self.sink = open_sink(folder, self.trackers, self.last_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # the LR this step is taken with (the scheduler moves it after the optimizer step, not per micro-batch)
        self.lr = optimizer_lr(trainer.optimizers[0]) if trainer.optimizers else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step == self.last_step:  # an accumulating micro-batch: no optimizer step yet
            return
        self.last_step = step
        if not trainer.is_global_zero or self.sink is None:
            return
        if self.lr is not None:
            self.sink.log(step, {"lr": self.lr})
        if not self.monitor.due(step):
            return
        result = self.monitor.evaluate(inner_model(pl_module, self.model_attr), step)
        metrics = dict(result.metrics)
        pl_module.log_dict({k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False,
                           rank_zero_only=True)
        self.sink.log(step, metrics)
        self.sink.flush()
        if self.verbose:
            echo(step, metrics, result.alerts)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.sink is not None:
            self.sink.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()

    def close(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.close()
