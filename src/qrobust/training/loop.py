"""The training loop: main run + cooldown branches, checkpoints, manifest, exact resume, one process or a
torchrun world (DDP / FSDP2), fp32 or mixed precision, gradient accumulation.

Resume is exact because everything a step depends on is either in the checkpoint (weights, AdamW
state, loss scale, step) or a pure function of the step (the LR from :class:`Schedule`, the batch from the
seeded per-epoch permutation of training blocks). A killed run restarts from its last checkpoint folder;
checkpoint folders are written atomically, so the last one present is complete.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..config import EXECUTION_FIELDS, TrainConfig
from ..data.prepare import TrainingData, prepare_training
from ..errors import ConfigError, QrobustError
from ..io.atomic import write_text
from ..io.files import MASTER_FILE, OPTIMIZER_FILE, STATE_FILE
from ..leftovers import clean as clean_leftovers
from ..models import build_model, load_checkpoint, model_config
from ..quant.pipelines.streamed.hidden_states import host_available_bytes
from ..trajectory import Trajectory, load_trajectory
from .averages import RunningAverages
from .batches import GlobalBatches
from .checkpoints import ckpt_dir, latest, main_schedule, write_manifest
from .parallel import host_model, like, load_optimizer_state, wrap_model
from .precision import Precision
from .runtime import Runtime, batch_layout, start_runtime, stop_runtime
from .saving import CheckpointWriter, TrainedState
from .schedule import Schedule
from .state import read_optimizer_state
from .step import StepResult, optimizer_step
from .flops import device_name, flops_per_token, meta_model, peak_flops
from .throughput import Throughput
from .progress import format_postfix
from .trackers import FanOut, TrackerContext, check_trackers, open_trackers
from .monitoring import build_monitor, monitor_step, restore_history
from ..monitor import Monitor


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


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


@dataclass
class _Segment:
    """A run segment being trained: the module steps call, and what its checkpoints save."""

    wrapped: torch.nn.Module
    state: TrainedState
    step: int


@dataclass
class _Trainer:
    """What every run of one training config shares: config, folder, data, batch order, process, hooks."""

    cfg: TrainConfig
    out: Path
    data: TrainingData
    batches: GlobalBatches
    rt: Runtime
    progress: bool
    on_step: Callable[[str, int], None] | None
    monitor: Monitor | None = None  # evaluated by rank 0 between steps (training/monitoring.py)

    def __post_init__(self) -> None:
        self.layout = batch_layout(self.cfg, self.rt.world.size)
        self.writer = CheckpointWriter(self.cfg, self.out, self.data.tokenizer, self.rt)
        cls, config = model_config(self.cfg.model.arch, self.cfg.model.preset, len(self.data.tokenizer),
                                   self.cfg.data.seq_len, self.cfg.model.overrides)
        self.flops_per_token = flops_per_token(meta_model(cls, config), config, self.cfg.data.seq_len).training
        self.peak = peak_flops(device_name(self.rt.device), self.cfg.precision, self.cfg.peak_tflops)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.data.seq_len

    def _model(self, start_dir: Path | None) -> torch.nn.Module:
        cfg = self.cfg
        if start_dir is None:
            return build_model(cfg.model.arch, cfg.model.preset, len(self.data.tokenizer), cfg.data.seq_len,
                               seed=cfg.seed, overrides=cfg.model.overrides)
        model = load_checkpoint(start_dir)
        if (start_dir / MASTER_FILE).is_file():  # saved in a lower dtype: continue from the fp32 masters
            model.load_state_dict(load_file(str(start_dir / MASTER_FILE)))
        return model

    def _begin(self, run: str, start_dir: Path | None, first_step: int, last_step: int) -> _Segment | None:
        """The segment to train ``run`` from: its latest checkpoint, else ``start_dir`` (a branch's parent
        checkpoint), else a fresh model at ``first_step``; None when the run already reached ``last_step``."""
        cfg, rt = self.cfg, self.rt
        start_dir = latest(self.out, run) or start_dir
        state = json.loads((start_dir / STATE_FILE).read_text()) if start_dir is not None else None
        if state is not None and state["step"] >= last_step:
            return None
        base = self._model(start_dir)
        host = host_model(base, rt)
        wrapped = wrap_model(base, rt, cfg.compile if cfg.compile is not None else rt.device.type == "cuda")
        opt = _make_optimizer(base, cfg)
        precision = Precision(cfg.precision, rt.device)
        avgs = RunningAverages(cfg.averaging, cfg.checkpoint_every, base)
        if state is not None:
            sd = read_optimizer_state(start_dir / OPTIMIZER_FILE, state["optimizer_groups"])
            load_optimizer_state(base, opt, sd, rt)
            precision.restore(state.get("grad_scaler"))
            if avgs:
                avgs.restore(start_dir, state.get("averaging"))
                avgs.relayout(list(base.parameters()), like)
        meter = Throughput(self.flops_per_token, self.peak, rt.world.size)
        return _Segment(wrapped, TrainedState(base, host, opt, avgs, precision, meter, None),
                        state["step"] if state is not None else first_step)

    def segment(self, run: str, sched: Schedule, start_dir: Path | None, first_step: int, last_step: int) -> None:
        """Train steps [first_step, last_step) of one run, resuming from its latest checkpoint if any."""
        cfg, rt = self.cfg, self.rt
        seg = self._begin(run, start_dir, first_step, last_step)
        if seg is None:
            return
        ts, step = seg.state, seg.step
        for g in ts.opt.param_groups:
            g["lr"] = sched.lr(step)
            g["initial_lr"] = cfg.optim.lr
        seg.wrapped.train()
        bar = tqdm(total=last_step - step, desc=f"train {run}", disable=not (self.progress and rt.is_main), leave=False)
        with self._trackers(run, step) as trackers:
            restore_history(self.monitor, self.out, run, rt)
            while step < last_step:
                lr = sched.lr(step)
                for g in ts.opt.param_groups:
                    g["lr"] = lr
                res = self._step(seg, step)
                if not math.isfinite(res.loss):
                    raise QrobustError(f"training diverged at step {step} of run '{run}' (loss {res.loss}); "
                                       "lower optim.lr or raise warmup_steps")
                step += 1
                if ts.avgs:
                    ts.avgs.update(ts.base, step)
                ts.ema_loss = res.loss if ts.ema_loss is None else 0.9 * ts.ema_loss + 0.1 * res.loss
                trackers.log(step, {"loss": res.loss, "lr": lr, "grad_norm": res.grad_norm,
                                    "tokens": step * self.tokens_per_step, **ts.meter.metrics()})
                monitor_step(self.monitor, ts, step, trackers, rt)  # before this step's checkpoint flushes
                bar.update(1)
                bar.set_postfix(format_postfix({"loss": ts.ema_loss, "lr": lr, **ts.meter.metrics()}))
                if step % cfg.checkpoint_every == 0 or step == last_step:
                    trackers.flush()
                    self.writer.save(run, sched, step, ts)
                if self.on_step is not None:
                    self.on_step(run, step)
        bar.close()

    def _trackers(self, run: str, step: int) -> FanOut:
        """The configured trackers on rank 0 (the others log nothing)."""
        ctx = TrackerContext(self.out, run, self.cfg.name, self.cfg.model_dump(mode="json"), resume_step=step)
        return open_trackers(self.cfg.logging if self.rt.is_main else [], ctx)

    def _step(self, seg: _Segment, step: int) -> StepResult:
        with seg.state.meter.measure(self.tokens_per_step):  # ends after the loss reached the host
            micro = [x.to(self.rt.device) for x in self.batches.micro_batches(step, self.layout, self.rt.world.rank)]
            return optimizer_step(seg.wrapped, seg.state.opt, micro, seg.state.precision, self.rt,
                                  self.cfg.optim.grad_clip)


def _identity(cfg: TrainConfig) -> dict:
    """What must match for a folder's run to be continued: the config but where it runs, its branches and its
    monitor (which reads the weights and never changes the trajectory)."""
    d = cfg.model_dump(exclude={"out", "threads", "branches", "monitor", *EXECUTION_FIELDS})
    return d


def check_out_folder(cfg: TrainConfig, out: Path) -> None:
    cfg_file = out / "train_config.json"
    if not cfg_file.is_file():
        return
    theirs_raw = json.loads(cfg_file.read_text())
    try:  # written by an older qrobust: compare with today's defaults filled in
        theirs = TrainConfig.model_validate(theirs_raw)
    except Exception:
        theirs = None
    a = _identity(cfg)
    b = _identity(theirs) if theirs is not None else {k: v for k, v in theirs_raw.items() if k not in ("branches", "monitor")}
    if a.get("batch_size") != b.get("batch_size"):
        raise ConfigError(f"'{out}' holds a run with global batch_size {b.get('batch_size')}, not {cfg.batch_size}; "
                          "a run resumes only with the same global batch (micro_batch_size, grad_accum and the "
                          "number of processes may change): use batch_size " f"{b.get('batch_size')} or another --out")
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


def _check_memory(cfg: TrainConfig, vocab_size: int, rt: Runtime) -> None:
    """Refuse a micro batch whose training step cannot fit in host memory before spending minutes on it."""
    if rt.device.type != "cpu":
        return
    _, config = model_config(cfg.model.arch, cfg.model.preset, vocab_size, cfg.data.seq_len, cfg.model.overrides)
    micro = batch_layout(cfg, rt.world.size).micro
    need = step_memory_bytes(config, micro, cfg.data.seq_len) * rt.world.local_size
    free = host_available_bytes()
    if need > free:
        what = "batch_size" if micro == cfg.batch_size else "micro_batch_size"
        raise ConfigError(f"{what} {micro} needs at least {need:,} bytes ({need / 2**30:.1f} GiB) for one "
                          f"training step (seq_len {cfg.data.seq_len}, vocab {vocab_size}), but {free:,} bytes "
                          f"({free / 2**30:.1f} GiB) of memory are available; lower {what}")


def _prepare(cfg: TrainConfig, out: Path, rt: Runtime, trust_remote_code: bool) -> tuple[TrainingData, Monitor | None]:
    """Checks, leftovers, data (rank 0 tokenizes first, the others read its cache), the monitor (built and
    checked on every rank), the recorded config."""
    check_out_folder(cfg, out)
    if rt.is_main:  # half-written checkpoint folders / files of a killed run (never a live writer's)
        clean_leftovers(out, recursive=False)
        clean_leftovers(out / "checkpoints")
    _check_branches(cfg, main_schedule(cfg))
    check_trackers(cfg.logging)
    if rt.is_main:
        data = prepare_training(cfg.data, out / "data", trust_remote_code)
    rt.barrier()
    if not rt.is_main:
        data = prepare_training(cfg.data, out / "data", trust_remote_code)
    _check_memory(cfg, len(data.tokenizer), rt)
    monitor = build_monitor(cfg, data.tokenizer)
    if rt.is_main:
        _record_config(cfg, out)
    return data, monitor


def train(cfg: TrainConfig, progress: bool = True, on_step: Callable[[str, int], None] | None = None,
          trust_remote_code: bool = False) -> Trajectory:
    """Train the main run and its cooldown branches; resume whatever was already done in ``cfg.out``.
    Under ``torchrun`` every process calls this; rank 0 writes. ``trust_remote_code``: allow the Python code of
    a tokenizer folder (``data.tokenizer``); it is a permission, not a setting of the run."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    rt = start_runtime(cfg)
    try:
        data, monitor = _prepare(cfg, out, rt, trust_remote_code)
        sched = main_schedule(cfg)
        trainer = _Trainer(cfg, out, data, GlobalBatches(data.blocks, cfg.batch_size, cfg.seed), rt, progress, on_step,
                           monitor)
        trainer.segment("main", sched, None, 0, cfg.steps)
        for b in cfg.branches:
            bs = sched.branch(b.from_step, b.decay_steps, b.shape, b.final_lr_ratio)
            trainer.segment(b.run_name, bs, ckpt_dir(out, "main", b.from_step), b.from_step,
                            b.from_step + b.decay_steps)
        rt.barrier()
        return write_manifest(cfg, out, sched, trainer.tokens_per_step) if rt.is_main else load_trajectory(out)
    finally:
        stop_runtime(rt)
