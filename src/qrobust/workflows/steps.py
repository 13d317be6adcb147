"""The pipeline's steps as the workflows and the API run them: validate a config (object, mapping or YAML
path, keyword overrides on top), then train, sweep in this process, or report. One place, so the demo, a
reproduction and ``qrobust.train``/``qrobust.sweep`` validate and run a config the same way."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from ..config import SweepConfig, TrainConfig, load_yaml, parse_config
from ..errors import ConfigError
from ..sweeps.run import SweepSummary
from ..trajectory import Trajectory

C = TypeVar("C")


def validated(cls: type[C], config: Any, overrides: dict[str, Any], what: str) -> C:
    """``config`` (a ``cls``, a mapping, a YAML path or None) with ``overrides`` on top, validated as ``cls``."""
    if isinstance(config, cls):
        data: Any = config.model_dump()  # type: ignore[attr-defined]
    elif isinstance(config, (str, Path)):
        data, what = load_yaml(config), f"{what} file {config}"
    else:
        data = config if config is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(data).__name__}")
    return parse_config(cls, {**data, **overrides}, what)


def train(config: Any, progress: bool = True, trust_remote_code: bool = False, nproc: int | None = None,
          torchrun_flags: list[str] | None = None, **overrides: Any) -> Trajectory:
    """Train the run (and its branches) of ``config``; resumes where an earlier call stopped. ``nproc``: launch
    that many torchrun workers per node (``torchrun_flags``: its multi-node flags) and wait for them."""
    from ..training.loop import train as train_run
    cfg = validated(TrainConfig, config, overrides, "train config")
    if nproc is None:
        return train_run(cfg, progress=progress, trust_remote_code=trust_remote_code)
    from ..training.launch import launch
    from ..trajectory import load_trajectory
    launch(cfg, nproc, list(torchrun_flags or []), progress, trust_remote_code)
    return load_trajectory(cfg.out)


def sweep_config(config: Any, **overrides: Any) -> SweepConfig:
    """The validated sweep config (a bad key, type or method option is one ConfigError)."""
    from ..sweeps.run import variants
    cfg = validated(SweepConfig, config, overrides, "sweep config")
    variants(cfg)
    return cfg


def sweep_with(executor: str, cfg: SweepConfig, options: Any) -> SweepSummary:
    """Sweep ``cfg`` with the executor registered as ``executor`` (local, array, ray or a plugin)."""
    from ..sweeps.executors import run_executor
    return run_executor(executor, cfg, options)


def sweep(config: Any, progress: bool = True, **overrides: Any) -> SweepSummary:
    """Validate ``config`` and sweep it in this process (the ``local`` executor)."""
    from ..sweeps.executors import ExecutorOptions
    return sweep_with("local", validated(SweepConfig, config, overrides, "sweep config"), ExecutorOptions(progress))


def report(results: str | Path, out: str | Path | None = None) -> Path:
    """Figures and the HTML page of a results folder; returns the page's path."""
    from ..reporting import write_report
    return write_report(results, out)
