"""Typed keyword options of the wide API calls (sweep's executor, export, landscape).

Each public call keeps its keyword form (``qrobust.export(ck, out, bits=3, damp=0.02)``) and also takes
the options object itself; :func:`split_options` sorts the keywords into the object's fields and the rest
(config overrides, a method's options), so a function has a few parameters instead of sixteen."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


def split_options(cls: type[T], given: T | None, kwargs: dict[str, Any]) -> tuple[T, dict[str, Any]]:
    """(``given`` or the defaults, updated with the keywords naming its fields; the other keywords)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    mine = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return replace(given if given is not None else cls(), **mine), rest  # type: ignore[type-var]


def options_only(cls: type[T], given: T | None, kwargs: dict[str, Any], what: str) -> T:
    """:func:`split_options` where every keyword must be a field: an unknown one is one ConfigError."""
    opts, rest = split_options(cls, given, kwargs)
    if rest:
        known = ", ".join(f.name for f in fields(cls))  # type: ignore[arg-type]
        raise ConfigError(f"unknown {what} '{sorted(rest)[0]}'; known: {known}")
    return opts


@dataclass(frozen=True)
class ExecutorOptions:
    """Where a sweep's checkpoint groups run: this process (``local``, optionally one worker of a job array:
    every ``array_count``-th checkpoint from ``array_index``) or one Ray task each (``ray``)."""
    executor: str = "local"
    array_index: int | None = None
    array_count: int | None = None
    ray_address: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: float = 0.0

    def run_options(self, progress: bool = True) -> Any:
        """What the chosen executor itself receives (the executor is chosen by name from the registry)."""
        from ..sweeps.executors import ExecutorOptions as Run
        return Run(progress=progress, array_index=self.array_index, array_count=self.array_count,
                          address=self.ray_address, cpus_per_task=self.cpus_per_task, gpus_per_task=self.gpus_per_task)


@dataclass(frozen=True)
class LoadOptions:
    """How a checkpoint is loaded: pickle files and custom model code only when asked; device and dtype."""
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "float32"


@dataclass(frozen=True)
class CalibrationOptions:
    """Calibration windows for a method that needs them (validated as ``CalibrationConfig`` when drawn)."""
    n_samples: int = 128
    seq_len: int | None = None
    corpus: str | None = None
    seed: int = 0
    field: str | None = None


@dataclass(frozen=True)
class EvalOptions:
    """The held-out blocks of one checkpoint's evaluation (validated as ``EvalConfig`` when drawn)."""
    corpus: str | None = None
    field: str | None = None
    split: str = "val"
    n_blocks: int = 64
    seq_len: int | None = None
    batch_size: int = 8


@dataclass(frozen=True)
class TaskOptions:
    """Downstream tasks run on the FP and the quantized model (lm-evaluation-harness)."""
    names: tuple[str, ...] | list[str] = ()
    num_fewshot: int = 0
    limit: int | None = None
    backend: str = "hf"


@dataclass(frozen=True)
class StreamOptions:
    """Layer-streamed evaluation: where the hidden states carried between blocks live."""
    states: str = "auto"
    states_dir: Path | None = None


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`qrobust.export` writes. ``calibration``: blocks, ``None``, ``"auto"`` (the checkpoint's own
    calibration windows when the method needs them) or :class:`CalibrationOptions` (those settings, same rule);
    ``verify_blocks=N``: reload the export with transformers and compare the loss on N eval blocks.
    ``format``: "compressed-tensors" (the integer grid of bits / group_size) or a number format written in
    compressed-tensors, which then sets bits and blocks (``nvfp4``, ``mxfp4``, ``fp8-e4m3-channel`` …)."""
    method: str = "rtn"
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    include: tuple[str, ...] | list[str] = ()
    exclude: tuple[str, ...] | list[str] = ()
    calibration: Any = "auto"  # torch.Tensor | None | "auto" | CalibrationOptions
    format: str = "compressed-tensors"
    verify_blocks: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "float32"


@dataclass(frozen=True)
class LandscapeOptions:
    """A loss landscape's plane and grid (``pca``: margin beyond the checkpoints; ``random``: span and centre),
    its eval blocks, and how checkpoints load."""
    plane: str = "pca"
    runs: list[str] | None = None
    grid: int = 11
    margin: float = 0.25
    span: float = 1.0
    center: str | None = None
    n_blocks: int = 8
    seq_len: int | None = None
    batch_size: int = 8
    params: list[str] | None = None
    seed: int = 0
    progress: bool = True
    allow_pickle: bool = False
    trust_remote_code: bool = False


__all__ = ["CalibrationOptions", "EvalOptions", "ExecutorOptions", "ExportOptions", "LandscapeOptions", "LoadOptions", "StreamOptions",
           "TaskOptions", "options_only", "split_options"]
