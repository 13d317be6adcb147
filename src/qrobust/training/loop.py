"""The training loop: main run + cooldown branches, checkpoints, manifest, exact resume.

Resume is exact because everything a step depends on is either in the checkpoint (weights, AdamW
state, step) or a pure function of the step (the LR from :class:`Schedule`, the batch from the seeded
per-epoch permutation of training blocks). A killed run restarts from its last checkpoint folder;
checkpoint folders are written atomically, so the last one present is complete.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import TrainAverageConfig, TrainConfig
from ..data.blocks import BlockSource
from ..data.prepare import TrainingData, prepare_training
from ..errors import ConfigError, QrobustError, write_error
from ..quant.pipelines.streamed.hidden_states import host_available_bytes
from ..leftovers import clean as clean_leftovers
from ..io.files import AVERAGING_FILE, OPTIMIZER_FILE, STATE_FILE
from ..models import build_model, load_checkpoint, model_config, save_checkpoint
from ..names import safe_name
from ..io.atomic import write_text
from ..trajectory import MANIFEST, Checkpoint, Trajectory
from .averages import RunningAverages, swapped_parameters
from .schedule import Schedule
from .state import flatten_optimizer, restore_optimizer


def main_schedule(cfg: TrainConfig) -> Schedule:
    s = cfg.schedule
    return Schedule(peak_lr=cfg.optim.lr, total_steps=cfg.steps, warmup_steps=s.warmup_steps, kind=s.kind,
                    decay_steps=s.decay_steps, decay_shape=s.decay_shape, final_lr_ratio=s.final_lr_ratio)


def _check_branches(cfg: TrainConfig, sched: Schedule) -> None:
    for b in cfg.branches:
        if sched.phase(b.from_step - 1) != "stable":
            raise ConfigError(f"branch from_step {b.from_step} is not in the stable phase of the main schedule "
                              f"({sched.phase(b.from_step - 1)}); branch from a constant-LR checkpoint")
    names = [b.run_name for b in cfg.branches]
    if len(set(names)) != len(names) or "main" in names:
        raise ConfigError(f"branch names must be unique and not 'main': {names}")
    averaged = {f"{r}-{a.suffix(cfg.checkpoint_every)}" for r in ["main", *names] for a in cfg.averaging}
    if averaged & set(names):
        raise ConfigError(f"branch name '{sorted(averaged & set(names))[0]}' is also the name of an averaged run; "
                          "rename the branch")


def averaged_runs(cfg: TrainConfig, run: str) -> dict[str, TrainAverageConfig]:
    """Averaged run name -> its spec, for the averages kept while training ``run``."""
    return {f"{run}-{a.suffix(cfg.checkpoint_every)}": a for a in cfg.averaging}


@dataclass
class _Batches:
    """Batch for step s = samples [s*B, (s+1)*B) of an endless stream of seeded per-epoch permutations."""

    blocks: BlockSource
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(len(self.blocks), generator=g)
        return self._perms[epoch]

    def at(self, step: int) -> torch.Tensor:
        n = len(self.blocks)
        idx = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            idx.append(int(self._perm(i // n)[i % n]))
        return self.blocks.take(idx)


def _run_dir(out: Path, run: str) -> Path:
    """A run's checkpoint folder; run names are checked when the config is read, and again here."""
    return out / "checkpoints" / safe_name(run, "run name")


def _ckpt_dir(out: Path, run: str, step: int) -> Path:
    return _run_dir(out, run) / f"step-{step:07d}"


def _latest(out: Path, run: str) -> Path | None:
    d = _run_dir(out, run)
    if not d.is_dir():
        return None
    done = sorted(p for p in d.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


def write_manifest(cfg: TrainConfig, out: Path, sched: Schedule, tokens_per_step: int) -> Trajectory:
    """Rebuild the manifest from the checkpoint folders on disk (the manifest is derived, never edited)."""
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
    cks: list[Checkpoint] = []
    for run in runs:
        d = _run_dir(out, run)
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            st_file = p / STATE_FILE
            if not p.name.startswith("step-") or not st_file.is_file():
                continue
            st = json.loads(st_file.read_text())
            cks.append(Checkpoint(name=f"{run}/{p.name}", path=str(p.resolve()), step=st["step"],
                                  tokens=st["tokens"], lr=st["lr"], phase=st["phase"], run=run,
                                  parent=runs[run]["parent"], parent_step=runs[run]["from_step"]))
    traj = Trajectory(name=cfg.name, checkpoints=cks, runs=runs, data=cfg.data.model_dump(), source=str(out),
                      config=cfg.model_dump(exclude={"out", "threads"}))
    traj.save(out / MANIFEST)
    return traj


@dataclass
class _Trainer:
    """What every run of one training config shares: config, folder, data, batch order, hooks."""

    cfg: TrainConfig
    out: Path
    data: TrainingData
    batches: _Batches
    progress: bool
    on_step: Callable[[str, int], None] | None

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.data.seq_len

    def _begin(self, run: str, start_dir: Path | None, first_step: int,
               last_step: int) -> tuple[torch.nn.Module, torch.optim.AdamW, int, RunningAverages] | None:
        """(model, optimizer, step, running averages) to train ``run`` from: its latest checkpoint, else
        ``start_dir`` (a branch's parent checkpoint), else a fresh model at ``first_step``; None when the run
        already reached ``last_step``."""
        cfg = self.cfg
        resume = _latest(self.out, run)
        if resume is not None:
            start_dir = resume
        if start_dir is None:
            model = build_model(cfg.model.arch, cfg.model.preset, len(self.data.tokenizer), cfg.data.seq_len,
                                seed=cfg.seed, overrides=cfg.model.overrides)
            opt = _make_optimizer(model, cfg)
            return model, opt, first_step, RunningAverages(cfg.averaging, cfg.checkpoint_every, model)
        state = json.loads((start_dir / STATE_FILE).read_text())
        if state["step"] >= last_step:
            return None
        model = load_checkpoint(start_dir)
        opt = _make_optimizer(model, cfg)
        restore_optimizer(opt, start_dir / OPTIMIZER_FILE, state["optimizer_groups"])
        avgs = RunningAverages(cfg.averaging, cfg.checkpoint_every, model)
        if avgs:
            avgs.restore(start_dir, state.get("averaging"))
        return model, opt, state["step"], avgs

    def segment(self, run: str, sched: Schedule, start_dir: Path | None, first_step: int, last_step: int) -> None:
        """Train steps [first_step, last_step) of one run, resuming from its latest checkpoint if any."""
        cfg, out, batches, on_step = self.cfg, self.out, self.batches, self.on_step
        begun = self._begin(run, start_dir, first_step, last_step)
        if begun is None:
            return
        model, opt, step, avgs = begun
        for g in opt.param_groups:
            g["lr"] = sched.lr(step)
            g["initial_lr"] = cfg.optim.lr
        model.train()
        log = out / "logs" / f"{safe_name(run, 'run name')}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        _truncate_log(log, step)
        bar = tqdm(total=last_step - step, desc=f"train {run}", disable=not self.progress, leave=False)
        ema_loss = None
        with log.open("a") as logf:
            while step < last_step:
                lr = sched.lr(step)
                for g in opt.param_groups:
                    g["lr"] = lr
                x = batches.at(step)
                loss = model(input_ids=x, labels=x).loss
                if not torch.isfinite(loss):
                    raise QrobustError(f"training diverged at step {step} of run '{run}' (loss {loss.item()}); "
                                       "lower optim.lr or raise warmup_steps")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                opt.step()
                step += 1
                if avgs:
                    avgs.update(model, step)
                lv = loss.item()
                ema_loss = lv if ema_loss is None else 0.9 * ema_loss + 0.1 * lv
                _log_write(logf, log, json.dumps({"step": step, "loss": lv, "lr": lr}) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{ema_loss:.3f}", lr=f"{lr:.2e}")
                if step % cfg.checkpoint_every == 0 or step == last_step:
                    _log_write(logf, log, None)
                    self._save(run, sched, step, model, opt, ema_loss, avgs)
                if on_step is not None:
                    on_step(run, step)
        bar.close()

    def _save(self, run: str, sched: Schedule, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
              ema_loss: float | None, avgs: RunningAverages) -> None:
        """Checkpoint folder (weights, tokenizer, AdamW state, step/LR/phase) written atomically, then the manifest.

        Averaged checkpoints are written first: a raw folder on disk implies its averaged siblings are
        complete, and the raw folder carries the averaging state that resume continues from."""
        cfg = self.cfg
        tensors, groups = flatten_optimizer(opt)
        prev = max(step - 1, 0)  # the LR and phase of the last update that produced these weights
        state = {"step": step, "tokens": step * self.tokens_per_step, "run": run, "lr": sched.lr(prev),
                 "phase": sched.phase(prev), "samples_seen": step * cfg.batch_size, "train_loss_ema": ema_loss,
                 "optimizer_groups": _jsonable_groups(groups), "schedule": sched.to_dict(),
                 "data": cfg.data.model_dump(), "time": time.time()}
        was_training = model.training
        model.eval()
        files = {}
        if avgs:
            for avg_run, a in averaged_runs(cfg, run).items():
                values = avgs.averaged(a.suffix(cfg.checkpoint_every))
                if values is None:
                    continue
                meta = {k: state[k] for k in ("step", "tokens", "lr", "phase", "samples_seen", "data", "time")}
                meta.update(run=avg_run, averaged=avgs.info(a.suffix(cfg.checkpoint_every)), averaged_from=run)
                with swapped_parameters(model, values):
                    save_checkpoint(model, self.data.tokenizer, _ckpt_dir(self.out, avg_run, step), extra=meta,
                                    what="averaged checkpoint")
            avg_tensors, state["averaging"] = avgs.state()
            files[AVERAGING_FILE] = avg_tensors
        save_checkpoint(model, self.data.tokenizer, _ckpt_dir(self.out, run, step), extra=state,
                        extra_tensors=tensors, tensor_files=files)
        model.train(was_training)
        write_manifest(cfg, self.out, main_schedule(cfg), self.tokens_per_step)


def _jsonable_groups(groups: list[dict]) -> list[dict]:
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]


def _log_write(logf, log: Path, line: str | None) -> None:
    """Append a line to the step log (None: flush it); a full disk is one WriteError naming the log."""
    try:
        if line is None:
            logf.flush()
        else:
            logf.write(line)
    except OSError as e:
        raise write_error(e, log, "training log") from None


def _log_step(line: str) -> int | None:
    """The step of one log line; None for a line cut short by a kill or a full disk."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_log(log: Path, step: int) -> None:
    """Drop log lines past the resume point (and torn lines) so a resumed run's log equals an uninterrupted one's."""
    if not log.exists():
        return
    keep = [ln for ln in log.read_text().splitlines() if (s := _log_step(ln)) is not None and s <= step]
    write_text(log, "".join(k + "\n" for k in keep), "training log")


def _check_out(cfg: TrainConfig, out: Path) -> None:
    cfg_file = out / "train_config.json"
    mine = cfg.model_dump(exclude={"out", "threads"})
    if cfg_file.is_file():
        theirs = json.loads(cfg_file.read_text())
        with contextlib.suppress(Exception):  # written by an older qrobust: compare with today's defaults filled in
            theirs = TrainConfig.model_validate(theirs).model_dump(exclude={"out", "threads"})
        # branches may be added to a finished run; everything else must match
        a = {k: v for k, v in mine.items() if k != "branches"}
        b = {k: v for k, v in theirs.items() if k != "branches"}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(f"'{out}' holds a run with a different config (differs in: {', '.join(diff)}); "
                              "use another --out or the original config")


def _record_config(cfg: TrainConfig, out: Path) -> None:
    """Write the config beside the run (after every check: a refused config must not claim the folder)."""
    mine = cfg.model_dump(exclude={"out", "threads"})
    write_text(out / "train_config.json", json.dumps(mine, indent=1, sort_keys=True), "training config")


def step_memory_bytes(config, batch_size: int, seq_len: int) -> int:
    """A lower bound on the memory one fp32 training step holds at its peak: the logits and their gradient,
    per layer what backward keeps (block input, attention output, MLP hidden), and the int64 inputs/labels.

    Measured peaks are about twice this (micro, tiny presets): a batch refused by it cannot fit."""
    per_token = 2 * config.vocab_size + config.num_hidden_layers * (2 * config.hidden_size + config.intermediate_size)
    return batch_size * seq_len * (4 * per_token + 16)


def _check_memory(cfg: TrainConfig, vocab_size: int) -> None:
    """Refuse a batch whose training step cannot fit in host memory before spending minutes on it."""
    _, config = model_config(cfg.model.arch, cfg.model.preset, vocab_size, cfg.data.seq_len, cfg.model.overrides)
    need = step_memory_bytes(config, cfg.batch_size, cfg.data.seq_len)
    free = host_available_bytes()
    if need > free:
        raise ConfigError(f"batch_size {cfg.batch_size} needs at least {need:,} bytes ({need / 2**30:.1f} GiB) for one "
                          f"training step (seq_len {cfg.data.seq_len}, vocab {vocab_size}), but {free:,} bytes "
                          f"({free / 2**30:.1f} GiB) of memory are available; lower batch_size")


def train(cfg: TrainConfig, progress: bool = True, on_step: Callable[[str, int], None] | None = None,
          trust_remote_code: bool = False) -> Trajectory:
    """Train the main run and its cooldown branches; resume whatever was already done in ``cfg.out``.
    ``trust_remote_code``: allow the Python code of a tokenizer folder (``data.tokenizer``); it is a
    permission, not a setting of the run, so it is not part of the config."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    _check_out(cfg, out)
    # half-written checkpoint folders / files of a killed run (never a live writer's)
    clean_leftovers(out, recursive=False)
    clean_leftovers(out / "checkpoints")
    sched = main_schedule(cfg)
    _check_branches(cfg, sched)
    data = prepare_training(cfg.data, out / "data", trust_remote_code)
    _check_memory(cfg, len(data.tokenizer))
    _record_config(cfg, out)
    trainer = _Trainer(cfg, out, data, _Batches(data.blocks, cfg.batch_size, cfg.seed), progress, on_step)
    trainer.segment("main", sched, None, 0, cfg.steps)
    for b in cfg.branches:
        bs = sched.branch(b.from_step, b.decay_steps, b.shape, b.final_lr_ratio)
        trainer.segment(b.run_name, bs, _ckpt_dir(out, "main", b.from_step), b.from_step, b.from_step + b.decay_steps)
    return write_manifest(cfg, out, sched, trainer.tokens_per_step)

