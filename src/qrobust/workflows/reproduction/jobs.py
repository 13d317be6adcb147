"""``reproduce --jobs N``: train and sweep independent run folders in N worker processes at once.

On a small CPU, one tiny-model training step cannot keep several cores busy (2 threads train the demo
model only ≈ 1.6× faster than 1), so N single-threaded processes on N cores get more done per hour than
one N-threaded process. A unit of work is one run folder: its training, then every sweep any of the
experiments asks of it, in experiment order (F2, F4 and formats sweep one run; they never run at once).
Units run longest first. Each worker writes its progress to ``OUT/logs/<folder>.log``. Everything resumes
as before: afterwards each experiment finds its runs and records done and only judges them.

Numbers: a worker trains with ``--threads`` (default 1) threads; a run trained with another thread count may
differ in the last bits, so ``--jobs 1`` (the default) gives today's numbers exactly.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import SweepConfig, TrainConfig
from ...io.atomic import write_text


@dataclass
class Unit:
    """One run folder: its train config and the sweeps to run on it, in order."""
    train: TrainConfig
    sweeps: list[SweepConfig] = field(default_factory=list)

    def cost(self) -> float:
        """Rough work estimate for longest-first ordering: training steps (main + branch decays) and one
        sweep's worth of checkpoints per sweep."""
        t = self.train
        steps = t.steps + sum(b.decay_steps or 0 for b in t.branches)
        return steps * (1 + len(self.sweeps))


def add_units(units: dict[str, Unit], runs: dict[str, TrainConfig], sweeps: dict[str, SweepConfig]) -> None:
    """Add an experiment's (one seed's) runs and sweeps to ``units``, keyed by run folder."""
    for label, cfg in runs.items():
        unit = units.setdefault(cfg.out, Unit(cfg))
        unit.sweeps.append(sweeps[label])


def _redirect(log: Path) -> None:
    """Send this worker's stdout and stderr (Python and C level) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_unit(train: dict[str, Any], sweeps: list[dict[str, Any]], log: str) -> dict[str, float]:
    """In a worker: train the run, then run each sweep and write its report; returns the seconds each took."""
    from .. import steps
    _redirect(Path(log))
    t0 = time.perf_counter()
    steps.train(TrainConfig.model_validate(train), progress=True)
    t1 = time.perf_counter()
    for sc in sweeps:
        cfg = SweepConfig.model_validate(sc)
        steps.sweep(cfg, progress=True)
        steps.report(cfg.out)
    return {"train_s": t1 - t0, "sweep_s": time.perf_counter() - t1}


def run_units(units: dict[str, Unit], out: Path, jobs: int, threads: int | None, progress: bool) -> dict[str, Any]:
    """Run every unit in ``jobs`` worker processes (spawned: torch's thread pools do not survive a fork),
    ``threads`` torch threads each (default 1); returns (and writes to ``OUT/logs/jobs.json``) per-folder
    timings and the wall time."""
    todo = sorted(units.values(), key=lambda u: -u.cost())
    t0 = time.perf_counter()
    timings: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {}
        for u in todo:
            upd = {"threads": threads or 1}
            train = u.train.model_copy(update=upd).model_dump()
            sweeps = [s.model_copy(update=upd).model_dump() for s in u.sweeps]
            log = out / "logs" / f"{Path(u.train.out).name}.log"
            futures[pool.submit(run_unit, train, sweeps, str(log))] = u.train.out
        for fut in as_completed(futures):
            folder = futures[fut]
            timings[Path(folder).name] = fut.result()  # a worker's error is raised here, in one line by the CLI
            if progress:
                t = timings[Path(folder).name]
                print(f"[jobs] done {Path(folder).name}: train {t['train_s']:.0f} s, sweeps {t['sweep_s']:.0f} s "
                      f"({len(timings)}/{len(futures)})", flush=True)
    summary = {"jobs": jobs, "threads": threads or 1, "wall_s": time.perf_counter() - t0, "units": timings}
    write_text(out / "logs" / "jobs.json", json.dumps(summary, indent=1))
    return summary
