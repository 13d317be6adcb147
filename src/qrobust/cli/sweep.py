"""``qrobust sweep``: its arguments, job-array workers (from flags or Slurm's variables), ``--dry-run`` (the
plan) and ``--emit-slurm`` (the sbatch script the ``array`` executor writes)."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import QrobustError
from .args import positive


def add_sweep(sub) -> None:
    """The ``sweep`` command's arguments."""
    p = sub.add_parser("sweep", help="every checkpoint x methods x bits x group sizes -> results folder",
                       description="Load each checkpoint once, evaluate FP once, then quantize + evaluate every "
                                   "variant; finished records are skipped. Config keys: trajectory, out, methods, "
                                   "bits, group_sizes, sym, include, exclude, eval.*, calibration.*, average[], geometry.*, "
                                   "tasks.* "
                                   "(see experiments/sweep_rtn.yaml).")
    p.add_argument("config", help="YAML sweep config (e.g. experiments/sweep_rtn.yaml)")
    p.add_argument("--out", default=None, help="results folder (overrides the config's 'out')")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--device", default=None, help="overrides the config's 'device' (auto, cpu, cuda, cuda:N)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="overrides the config's 'dtype' (a non-float32 dtype gets its own records)")
    p.add_argument("--stream", action="store_true", default=None,
                   help="layer-streamed (sets the config's 'stream': one decoder block in memory at a time)")
    p.add_argument("--states", default=None, choices=["auto", "device", "cpu", "disk"],
                   help="overrides the config's 'states' (where streamed hidden states live)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--array-index", type=int, default=None,
                   help="this worker's index in a job array (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN)")
    p.add_argument("--array-count", type=positive, default=None,
                   help="workers in the job array; each takes every COUNT-th checkpoint (default: $SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--executor", default="local",
                   help="a registered executor: local (this process; a job-array worker with --array-index/"
                        "--array-count), array, ray (one Ray task per checkpoint: local Ray, or --ray-address)")
    p.add_argument("--ray-address", default=None, help="address of an existing Ray cluster (default: start one here)")
    p.add_argument("--cpus-per-task", type=positive, default=1, help="CPUs (and torch threads) per Ray task")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per Ray task")
    p.add_argument("--emit-slurm", action="store_true",
                   help="print an sbatch script that runs this sweep as a job array (needs --array-count), then exit")
    p.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="extra #SBATCH option for --emit-slurm, repeatable (e.g. time=04:00:00, gres=gpu:1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (checkpoints, variants, what is stored or missing) without loading a model")


def array_from_env(a: argparse.Namespace) -> tuple[int | None, int | None]:
    """--array-index/--array-count, else Slurm's job-array variables; (None, None) outside an array."""
    index, count = a.array_index, a.array_count
    env = os.environ
    if index is None and env.get("SLURM_ARRAY_TASK_ID"):
        try:
            index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = count or int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise QrobustError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is missing or not a number; "
                               "pass --array-index and --array-count") from None
    if (index is None) != (count is None):
        raise QrobustError("a job array needs both --array-index and --array-count")
    return index, count


def cmd_sweep(a: argparse.Namespace) -> int:
    from .. import api
    if a.emit_slurm:
        from ..sweeps.executors.array import slurm_script
        if a.array_count is None:
            raise QrobustError("--emit-slurm needs --array-count N (the number of array tasks)")
        api.sweep_config(a.config)  # a bad config fails here, not on the cluster
        sys.stdout.write(slurm_script(a.config, a.array_count, a.out, a.threads, a.slurm_opt))
        return 0
    index, count = array_from_env(a)
    over = {k: v for k, v in (("out", a.out), ("threads", a.threads), ("device", a.device), ("dtype", a.dtype),
                              ("stream", a.stream), ("states", a.states)) if v}
    if a.dry_run:
        from ..sweeps.dry_run import dry_run
        sys.stdout.write(dry_run(api.sweep_config(a.config, **over)))
        return 0
    s = api.sweep(a.config, progress=not a.quiet, array_index=index, array_count=count, executor=a.executor,
                  ray_address=a.ray_address, cpus_per_task=a.cpus_per_task, gpus_per_task=a.gpus_per_task, **over)
    part = f" (array task {index} of {count})" if count else ""
    busy = f", {s.claimed_elsewhere} held by other workers" if s.claimed_elsewhere else ""
    busy += f", {s.averaged} averaged checkpoints made" if s.averaged else ""
    busy += f", geometry of {s.geometry} checkpoints" if s.geometry else ""
    print(f"sweep{part}: {s.checkpoints} checkpoints, {s.records_written} new records, {s.records_skipped} already "
          f"done{busy}, {s.model_loads} model loads, {s.fp_evals} FP evaluations, {s.seconds:.1f} s -> {s.out}")
    for line in s.time_lines():
        print(line)
    if s.left_groups:  # another worker still holds them: exiting 0 would hide missing work
        raise QrobustError(f"{s.left_groups} checkpoint group(s) ({s.left_records} records) are not done: another "
                           "worker still holds them; re-run the sweep to finish them (a dead worker's claims are "
                           "taken over)")
    return 0

