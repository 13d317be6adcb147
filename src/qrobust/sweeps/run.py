"""Run a sweep on this worker: for each checkpoint group of the plan, claim it, then load once, evaluate FP
once, and quantize + evaluate every missing variant (:mod:`.run_group`).

The plan is grouped per checkpoint so the expensive, shared work (load, FP loss, calibration) happens once per
checkpoint whatever the number of variants, and a checkpoint whose records all exist is never loaded at all.
Several workers may share one results folder: each group is claimed first (:mod:`.claims`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..averaging.averagers import AverageJob
from ..averaging.run import is_made, make
from ..config import SweepConfig, parse_config
from ..downstream.run import check_backend
from ..errors import ConfigError
from ..models import resolve_device
from ..results.store import Store
from .claims import Claim, worker_id
from .context import Context
from .plan import Plan, average_claim_key
from .prepare import averaged_dir, check_stream, sweep_trajectory, variants
from .run_group import run_group
from .sets import BlockSets
from .summary import SweepSummary

__all__ = ["SweepSummary", "sweep", "sweep_trajectory", "variants", "check_config", "Worker"]


def check_config(cfg: SweepConfig, array_index: int | None = None, array_count: int | None = None) -> None:
    """Everything refused before anything is loaded or written: job-array bounds, methods and options,
    geometry outside float32, a GPU this machine lacks, what streaming cannot do, a missing task backend."""
    if array_count is not None or array_index is not None:
        if array_count is None or array_index is None or array_count < 1 or not 0 <= array_index < array_count:
            raise ConfigError(f"job array needs 0 <= index < count, got index {array_index}, count {array_count}")
    specs = variants(cfg)
    if cfg.geometry is not None and cfg.dtype != "float32":
        raise ConfigError("loss geometry (Hessian-vector products) needs float32 models; drop 'geometry' or "
                          f"set dtype: float32 (got {cfg.dtype})")
    resolve_device(cfg.device)  # a GPU asked for on a machine without one fails here, once
    if cfg.stream:
        check_stream(cfg, specs)
    if cfg.tasks is not None:
        check_backend(cfg.tasks.backend)  # vLLM missing: one line before any checkpoint is loaded


class Worker:
    """Visits the plan's groups under claims, counting progress per group (a group held elsewhere is
    counted by whoever finishes it)."""

    def __init__(self, plan: Plan, ctx: Context):
        self.plan, self.ctx = plan, ctx
        self.id = worker_id()
        self.held: dict[int, int] = {}  # group -> its variants not yet counted on the progress bar

    def visit(self, i: int) -> bool:
        """Checkpoint group ``i``: do what is missing; False when another worker holds it."""
        plan, ctx, store = self.plan, self.ctx, self.ctx.store
        average = plan.average(i)
        if average is not None and not self.make_average(average):
            return False  # another worker is averaging it; it will sweep it too
        first = not plan.planned(i)
        job = plan.job(i)
        todo = job.todo(store)
        if first:
            ctx.summary.records_skipped += len(plan.specs) - len(todo)
            ctx.bar.update(len(plan.specs) - len(todo))
        if not todo and not job.needs_geometry(store):
            ctx.bar.update(self.held.pop(i, 0))  # finished by the worker that held it
            return True
        claim = Claim(store.root, job.keys.claim, self.id, ctx.cfg.claim_ttl_s)
        if not claim.acquire():
            self.held.setdefault(i, len(todo))
            return False
        if i in self.held:  # taken over: the group's own progress counts from here
            ctx.bar.update(self.held.pop(i) - len(todo))
        lost = ctx.summary.lost_claims
        try:
            run_group(job, ctx, todo, claim)
        finally:
            claim.release()
        return ctx.summary.lost_claims == lost  # a claim lost midway: the worker that took it over finishes it

    def make_average(self, job: AverageJob) -> bool:
        """Make an averaged checkpoint under a claim (made already: nothing to do); False if claimed elsewhere."""
        cfg = self.ctx.cfg
        out = averaged_dir(cfg)
        if is_made(job, out, cfg.eval):
            return True
        claim = Claim(self.ctx.store.root, average_claim_key(cfg, job), self.id, cfg.claim_ttl_s)
        if not claim.acquire():
            return False
        try:
            make(job, out, cfg.eval, cfg.allow_pickle, cfg.trust_remote_code)
            self.ctx.summary.averaged += 1
        finally:
            claim.release()
        return True

    def left(self, waiting: list[int]) -> None:
        """Count the groups still held elsewhere when this worker gives up, and their missing records."""
        for i in waiting:
            self.ctx.summary.left_groups += 1
            self.ctx.summary.left_records += (len(self.plan.job(i).todo(self.ctx.store)) if self.plan.planned(i)
                                              else len(self.plan.specs))


def wait_for_others(cfg: SweepConfig, waiting: list[int], visit: Callable[[int], bool]) -> list[int]:
    """Revisit the groups other workers held: take over those whose holder died (at once on this host,
    after ``claim_ttl_s`` elsewhere), count those finished meanwhile, and wait for the rest while they
    progress, giving up after ``claim_ttl_s`` without progress; returns the groups still left."""
    poll = min(max(cfg.claim_ttl_s / 20, 0.05), 5.0)
    patience = cfg.claim_ttl_s + 2 * poll  # a holder on another host that died just now goes stale within it
    deadline = time.monotonic() + patience
    while waiting:
        still = [i for i in waiting if not visit(i)]
        if len(still) < len(waiting):
            deadline = time.monotonic() + patience
        waiting = still
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return waiting


def start(cfg: SweepConfig, progress: bool, array: tuple[int | None, int | None],
          only: list[int] | None) -> tuple[Plan, Context]:
    """Open the store (trajectory and config kept for the report) and plan this worker's share: every
    ``array[1]``-th checkpoint from ``array[0]`` (job arrays), only the indices in ``only`` if given."""
    index, count = array
    traj, pending = sweep_trajectory(cfg)
    store = Store(cfg.out)
    store.save_trajectory(traj)
    store.save_config(cfg.model_dump(exclude={"threads"}))
    sets = BlockSets(cfg)
    mine = [c for i, c in enumerate(traj) if (count is None or i % count == index) and (only is None or i in only)]
    plan = Plan(cfg, traj, mine, pending, sets)
    bar = tqdm(total=len(mine) * len(plan.specs), desc="sweep", disable=not progress, unit="job")
    store.clean()  # temporary files of killed writers (never those of a live worker): see leftovers.py
    return plan, Context(cfg, traj, sets, store, SweepSummary(out=Path(cfg.out), checkpoints=len(traj)), bar, progress)


def sweep(config: SweepConfig | dict[str, Any], progress: bool = True, array_index: int | None = None,
          array_count: int | None = None, only: list[int] | None = None) -> SweepSummary:
    """Quantize and evaluate every checkpoint of a trajectory for every variant; resumable.

    Several workers may run on one results folder at once: each checkpoint group is claimed first
    (``claims.py``). ``array_index`` / ``array_count`` give this worker every ``array_count``-th
    checkpoint starting at ``array_index`` (job arrays); ``only`` restricts it to those checkpoint
    indices (one executor task per checkpoint)."""
    cfg = config if isinstance(config, SweepConfig) else parse_config(SweepConfig, config, "sweep config")
    check_config(cfg, array_index, array_count)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    plan, ctx = start(cfg, progress, (array_index, array_count), only)
    worker = Worker(plan, ctx)
    waiting = [i for i in range(len(plan)) if not worker.visit(i)]
    ctx.summary.claimed_elsewhere = len(waiting)
    worker.left(wait_for_others(cfg, waiting, worker.visit))
    ctx.bar.close()
    ctx.summary.seconds = time.perf_counter() - t_start
    return ctx.summary
