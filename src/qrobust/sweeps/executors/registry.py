"""The executor registry: name -> executor, one decorator (see the package doc)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...registries import Registry
from ...config import SweepConfig
from ..summary import SweepSummary


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run: progress bars; this worker's share of a job array; where Ray runs and what each task gets."""

    progress: bool = True
    array_index: int | None = None
    array_count: int | None = None
    address: str | None = None  # ray: an existing cluster (default: start one here)
    cpus_per_task: int = 1
    gpus_per_task: float = 0.0


Executor = Callable[[SweepConfig, ExecutorOptions], SweepSummary]
EXECUTORS: Registry[Executor] = Registry("executor")
register_executor = EXECUTORS.register
get_executor = EXECUTORS.lookup


def run_executor(name: str, cfg: SweepConfig, options: ExecutorOptions | None = None) -> SweepSummary:
    """Run the sweep ``cfg`` with the executor registered as ``name``."""
    return get_executor(name)(cfg, options or ExecutorOptions())
