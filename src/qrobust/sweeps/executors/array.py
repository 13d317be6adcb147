"""The ``array`` executor: one task of a job array. Each of N tasks is a local worker taking every N-th
checkpoint; claims in the results folder make a re-submitted or overlapping task skip what is done or in
progress, and resume what a dead task left. :func:`slurm_script` writes the sbatch script that starts them."""
from __future__ import annotations

import shlex
from pathlib import Path

from ...config import SweepConfig
from ...errors import ConfigError, QrobustError
from ..run import sweep
from ..summary import SweepSummary
from .registry import ExecutorOptions, register_executor


@register_executor("array")
def run_array_task(cfg: SweepConfig, options: ExecutorOptions) -> SweepSummary:
    if options.array_index is None or options.array_count is None:
        raise ConfigError("executor 'array' needs this task's array index and the array count")
    return sweep(cfg, progress=options.progress, array_index=options.array_index, array_count=options.array_count)


def slurm_script(config: str, count: int, out: str | None, threads: int | None, opts: list[str]) -> str:
    """An sbatch script running ``qrobust sweep CONFIG`` as a job array of ``count`` workers; ``opts`` are
    extra ``KEY=VALUE`` #SBATCH options."""
    lines = ["#!/bin/bash", "#SBATCH --job-name=qrobust-sweep", f"#SBATCH --array=0-{count - 1}",
             f"#SBATCH --cpus-per-task={threads or 8}", "#SBATCH --output=qrobust-sweep-%A_%a.log"]
    for o in opts:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise QrobustError(f"--slurm-opt expects KEY=VALUE, got '{o}'")
        lines.append(f"#SBATCH --{key}={value}")
    cmd = ["qrobust", "sweep", shlex.quote(str(Path(config).resolve())), "--quiet",
           f"--array-count {count}"] + ([f"--out {shlex.quote(str(Path(out).resolve()))}"] if out else []) \
        + ([f"--threads {threads}"] if threads else [])
    lines += ["", "# each task takes every %d-th checkpoint; claims in the results folder make a re-submitted" % count,
              "# or overlapping task skip what is done or in progress, and resume what a dead task left",
              "set -euo pipefail", " ".join(cmd), ""]
    return "\n".join(lines)
