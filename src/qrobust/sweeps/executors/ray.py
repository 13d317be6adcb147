"""The ``ray`` executor: one Ray task per
checkpoint group, with the CPUs/GPUs each needs declared, on a local Ray that qrobust starts or on an
existing cluster (``address``). Tasks run the same ``run.sweep`` restricted to their checkpoint, so the
numbers are the local ones, and the results folder's claims keep two tasks (or a task and a local
worker) from doing one group twice.
"""
from __future__ import annotations

import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...config import SweepConfig
from ...errors import ConfigError, QrobustError
from ..prepare import sweep_trajectory, variants
from ..run import sweep
from ..summary import SweepSummary
from .registry import ExecutorOptions, register_executor


def ray_task(cfg_dict: dict[str, Any], index: int, threads: int) -> dict[str, Any]:
    import torch
    torch.set_num_threads(threads)
    s = sweep(SweepConfig(**cfg_dict), progress=False, only=[index])
    return {f.name: getattr(s, f.name) for f in fields(s) if f.name not in ("out", "new_keys", "seconds")}


def run_ray(cfg: SweepConfig, progress: bool = True, address: str | None = None, cpus_per_task: int = 1,
            gpus_per_task: float = 0.0) -> SweepSummary:
    """One Ray task per checkpoint group; returns the summed summary."""
    try:
        import ray
    except ImportError:
        raise QrobustError("executor 'ray' needs Ray: pip install 'qrobust[ray]' (or pip install ray)") from None
    variants(cfg)  # bad methods fail here, before a cluster is started
    traj, _ = sweep_trajectory(cfg)
    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = os.cpu_count()
        try:
            ray.init(**kw)
        except Exception as e:  # unreachable address, port clash, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise QrobustError(f"cannot start or reach Ray ({address or 'local'}): {first}") from None
    try:
        remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task)(ray_task)
        cfg_dict = cfg.model_dump()
        pending = [remote.remote(cfg_dict, i, cpus_per_task) for i in range(len(traj))]
        total = SweepSummary(out=Path(cfg.out), checkpoints=len(traj))
        bar = tqdm(total=len(pending), desc="sweep (ray)", unit="ckpt", disable=not progress)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            total.merge(ray.get(done[0]))
            bar.update(1)
        bar.close()
    finally:
        if started:
            ray.shutdown()
    total.seconds = time.perf_counter() - t0
    return total


@register_executor("ray")
def run_ray_executor(cfg: SweepConfig, options: ExecutorOptions) -> SweepSummary:
    if options.array_count is not None:
        raise ConfigError("job arrays and the ray executor do not combine; choose one")
    return run_ray(cfg, options.progress, options.address, options.cpus_per_task, options.gpus_per_task)
