"""The sbatch script of a multi-node training run: one ``torchrun`` per node (``srun`` with one task per
node), rendezvous through c10d on the first node, every node running ``-m qrobust train CONFIG``. The
sweep's job-array script is :func:`qrobust.sweeps.executors.array.slurm_script`; this is its training
sibling in the same style."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..io.atomic import atomic_file, umask

RDZV_PORT = 29500
CPUS_PER_GPU = 8  # the one task per node starts every rank: without this Slurm would give it one CPU
# minutes | MM:SS | HH:MM:SS | D-HH | D-HH:MM | D-HH:MM:SS (sbatch --time)
SLURM_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how long the job runs; ``extra`` are more ``KEY=VALUE`` #SBATCH options (``cpus-per-task=N``
    replaces the default of 8 CPUs per GPU)."""

    nodes: int = 1
    gpus_per_node: int = 1
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def sbatch_lines(name: str, o: SlurmOptions) -> list[str]:
    """The #SBATCH header: one task per node (it starts torchrun, which starts one process per GPU)."""
    if o.nodes < 1 or o.gpus_per_node < 1:
        raise ConfigError(f"--nodes and --gpus-per-node must be at least 1, got {o.nodes} and {o.gpus_per_node}")
    if o.time is not None and not SLURM_TIME.match(o.time):
        raise ConfigError(f"--time '{o.time}' is not a Slurm time; use minutes, HH:MM:SS or D-HH:MM:SS")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=qrobust-train-{name}", f"#SBATCH --nodes={o.nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={o.gpus_per_node}",
             f"#SBATCH --output=qrobust-train-{name}-%j.log"]
    if not any(opt.startswith("cpus-per-task=") for opt in o.extra):
        lines.append(f"#SBATCH --cpus-per-task={CPUS_PER_GPU * o.gpus_per_node}")
    lines += [f"#SBATCH --{k}={v}" for k, v in (("time", o.time), ("partition", o.partition),
                                                ("account", o.account)) if v]
    for opt in o.extra:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-opt expects KEY=VALUE, got '{opt}'")
        lines.append(f"#SBATCH --{key}={value}")
    return lines


def train_slurm_script(config: str | Path, name: str, options: SlurmOptions, out: str | None = None) -> str:
    """An sbatch script training ``config`` on ``options.nodes`` × ``options.gpus_per_node`` processes.
    Re-submitting it resumes the run (the loop resumes from the run folder's last checkpoint)."""
    torchrun = ["srun", "torchrun", '--nnodes "$SLURM_NNODES"', f"--nproc-per-node {options.gpus_per_node}",
                '--rdzv-id "$SLURM_JOB_ID"', "--rdzv-backend c10d", f'--rdzv-endpoint "$head_node:{RDZV_PORT}"',
                "-m qrobust train", shlex.quote(str(Path(config).resolve())), "--quiet"]
    if out:
        torchrun.append(f"--out {shlex.quote(str(Path(out).resolve()))}")
    return "\n".join(sbatch_lines(name, options) + [
        "", "# one torchrun per node; they meet at the first node of the allocation (c10d rendezvous)",
        "# re-submitting this script resumes the run from its last checkpoint",
        "set -euo pipefail", 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        " ".join(torchrun), ""])


def write_train_slurm(path: str | Path, script: str) -> Path:
    """Write the script atomically (a half-written sbatch file is never left behind), executable."""
    p = Path(path)
    with atomic_file(p, "Slurm script") as tmp:
        tmp.write_text(script, encoding="utf-8")
        tmp.chmod(0o777 & ~umask())
    return p
