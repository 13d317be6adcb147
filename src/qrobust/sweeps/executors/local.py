"""The ``local`` executor: every checkpoint group in this process, one after another (or this worker's share
of a job array, when an array index and count are given)."""
from __future__ import annotations

from ...config import SweepConfig
from ..run import sweep
from ..summary import SweepSummary
from .registry import ExecutorOptions, register_executor


@register_executor("local")
def run_local(cfg: SweepConfig, options: ExecutorOptions) -> SweepSummary:
    return sweep(cfg, progress=options.progress, array_index=options.array_index, array_count=options.array_count)
