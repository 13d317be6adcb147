"""``qrobust train``'s planning flags: ``--plan`` (what the run will cost, without training) and
``--emit-slurm FILE`` (an sbatch script with one torchrun per node). The launcher flag ``--nproc`` is the
training command's own; the plan reads it as the world size."""
from __future__ import annotations

import argparse
from typing import Any

from .args import positive, positive_float
from .show import plan_lines


def add_train_planning_args(p: argparse.ArgumentParser) -> None:
    """``--plan [--mfu]`` and ``--emit-slurm FILE`` with the Slurm allocation's flags."""
    g = p.add_argument_group("planning (nothing is trained)")
    g.add_argument("--plan", action="store_true",
                   help="print steps, tokens, FLOPs, memory per device and GPU-hours (world size: --nproc, or "
                        "--nodes × --gpus-per-node when those are given) and exit")
    g.add_argument("--mfu", type=positive_float, default=0.4,
                   help="model FLOPs utilisation assumed for --plan's GPU-hours (default 0.4)")
    g.add_argument("--emit-slurm", metavar="FILE", default=None,
                   help="write an sbatch script that trains this config with one torchrun per node, and exit")
    g.add_argument("--nodes", type=positive, default=None, help="--emit-slurm: nodes (default 1)")
    g.add_argument("--gpus-per-node", type=positive, default=None, help="--emit-slurm: GPUs per node (default 1)")
    g.add_argument("--time", default=None, help="--emit-slurm: time limit (e.g. 2-00:00:00)")
    g.add_argument("--partition", default=None, help="--emit-slurm: Slurm partition")
    g.add_argument("--account", default=None, help="--emit-slurm: Slurm account")
    g.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="--emit-slurm: extra #SBATCH option, repeatable (e.g. mem=0, qos=high)")


def world_size(a: argparse.Namespace) -> int:
    """--nproc (the launcher's flag), else nodes × GPUs per node, else 1."""
    nproc = getattr(a, "nproc", None)
    if nproc:
        return int(nproc)
    return (a.nodes or 1) * (a.gpus_per_node or 1)


def cmd_train_plan(a: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from .. import api
    plan = api.plan_training(a.config, world_size=world_size(a), mfu=a.mfu, trust_remote_code=a.trust_remote_code,
                             **overrides)
    print("\n".join(plan_lines(plan)))
    return 0


def cmd_train_slurm(a: argparse.Namespace) -> int:
    from .. import api
    from ..training.slurm import SlurmOptions
    options = SlurmOptions(nodes=a.nodes or 1, gpus_per_node=a.gpus_per_node or 1, time=a.time,
                           partition=a.partition, account=a.account, extra=tuple(a.slurm_opt))
    path = api.train_slurm(a.config, a.emit_slurm, options, out=a.out)
    print(f"wrote {path} ({options.nodes} node(s) × {options.gpus_per_node} GPU(s)); submit with: sbatch {path}")
    return 0
