"""Where a training run's checkpoints live, which is the latest complete one, and the manifest derived from them."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainAverageConfig, TrainConfig
from ..io.files import STATE_FILE
from ..names import safe_name
from ..trajectory import MANIFEST, Checkpoint, Trajectory
from .schedule import Schedule


def main_schedule(cfg: TrainConfig) -> Schedule:
    s = cfg.schedule
    return Schedule(peak_lr=cfg.optim.lr, total_steps=cfg.steps, warmup_steps=s.warmup_steps, kind=s.kind,
                    decay_steps=s.decay_steps, decay_shape=s.decay_shape, final_lr_ratio=s.final_lr_ratio)


def averaged_runs(cfg: TrainConfig, run: str) -> dict[str, TrainAverageConfig]:
    """Averaged run name -> its spec, for the averages kept while training ``run``."""
    return {f"{run}-{a.suffix(cfg.checkpoint_every)}": a for a in cfg.averaging}


def run_dir(out: Path, run: str) -> Path:
    """A run's checkpoint folder; run names are checked when the config is read, and again here."""
    return out / "checkpoints" / safe_name(run, "run name")


def ckpt_dir(out: Path, run: str, step: int) -> Path:
    return run_dir(out, run) / f"step-{step:07d}"


def latest(out: Path, run: str) -> Path | None:
    """The run's last complete checkpoint folder (folders are written atomically: present means complete)."""
    d = run_dir(out, run)
    if not d.is_dir():
        return None
    done = sorted(p for p in d.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _runs(cfg: TrainConfig, sched: Schedule, tokens_per_step: int) -> dict[str, dict]:
    runs: dict[str, dict] = {"main": {"schedule": sched.to_dict(), "parent": None, "from_step": None}}
    for b in cfg.branches:
        bs = sched.branch(b.from_step, b.decay_steps, b.shape, b.final_lr_ratio)
        runs[b.run_name] = {"schedule": bs.to_dict(), "parent": "main", "from_step": b.from_step}
    for name, r in list(runs.items()):
        s = Schedule(**r["schedule"])
        lo = r["from_step"] or 0
        r["lr_curve"] = [[st, st * tokens_per_step, lr] for st, lr in s.curve() if st >= lo]
        r["tokens_per_step"] = tokens_per_step
    for name in list(runs):
        for avg_run, a in averaged_runs(cfg, name).items():
            opts = {"beta": a.beta} if a.kind == "ema" else {"window": a.window, "every": a.every or cfg.checkpoint_every}
            runs[avg_run] = {"averaged": {"averager": f"train-{a.kind}", **opts},
                             "parent": name, "from_step": None, "tokens_per_step": tokens_per_step}
    return runs


def write_manifest(cfg: TrainConfig, out: Path, sched: Schedule, tokens_per_step: int) -> Trajectory:
    """Rebuild the manifest from the checkpoint folders on disk (the manifest is derived, never edited)."""
    runs = _runs(cfg, sched, tokens_per_step)
    cks: list[Checkpoint] = []
    for run in runs:
        d = run_dir(out, run)
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            st_file = p / STATE_FILE
            if not p.name.startswith("step-") or not st_file.is_file():
                continue
            st = json.loads(st_file.read_text())
            if st.get("throughput"):  # the latest checkpoint's figures stand for the run
                runs[run]["throughput"] = st["throughput"]
            cks.append(Checkpoint(name=f"{run}/{p.name}", path=str(p.resolve()), step=st["step"],
                                  tokens=st["tokens"], lr=st["lr"], phase=st["phase"], run=run,
                                  parent=runs[run]["parent"], parent_step=runs[run]["from_step"]))
    traj = Trajectory(name=cfg.name, checkpoints=cks, runs=runs, data=cfg.data.model_dump(), source=str(out),
                      config=cfg.model_dump(exclude={"out", "threads"}))
    traj.save(out / MANIFEST)
    return traj
