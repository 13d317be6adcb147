"""``qrobust sweep --dry-run``: the plan of a sweep (checkpoints, variants, what the results folder already
holds and what is missing), from files only: no model is loaded and nothing is written."""
from __future__ import annotations

from pathlib import Path

from ..config import SweepConfig
from ..results.store import Store
from .plan import Plan
from .prepare import sweep_trajectory
from .run import check_config
from .sets import BlockSets


def dry_run(cfg: SweepConfig) -> str:
    """The plan of ``cfg`` against its results folder, as printed lines."""
    check_config(cfg)
    traj, pending = sweep_trajectory(cfg)
    plan = Plan(cfg, traj, list(traj), pending, BlockSets(cfg))
    store = Store(cfg.out, create=False) if (Path(cfg.out) / "records").is_dir() else None
    labels = [s.label for s in plan.specs]
    lines = [f"plan: trajectory '{traj.name}', {len(plan)} checkpoints x {len(labels)} variants "
             f"({', '.join(labels)}) -> {cfg.out}"]
    missing = loads = 0
    for i, (ck, todo) in enumerate(plan.todo(store)):
        what = "averaged checkpoint, made when swept" if todo is None else \
            f"{len(plan.specs) - len(todo)} of {len(plan.specs)} stored"
        todo = list(plan.specs) if todo is None else todo
        geo = plan.planned(i) and (plan.job(i).needs_geometry(store) if store is not None
                                   else plan.job(i).keys.geometry is not None)
        missing += len(todo)
        loads += bool(todo or geo)
        tail = f"; missing: {', '.join(s.label for s in todo)}" if todo else ""
        lines.append(f"  {ck.name} (step {ck.step}): {what}{tail}{'; geometry missing' if geo else ''}")
    total = len(plan) * len(plan.specs)
    lines.append(f"{total - missing} of {total} records stored, {missing} missing; {loads} checkpoint(s) to load")
    return "\n".join(lines) + "\n"
