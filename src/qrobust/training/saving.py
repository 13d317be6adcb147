"""Write one training checkpoint: every rank joins the gathers, rank 0 writes, all wait for it.

The folder is the same whatever the world size or sharding: Hugging Face weights (fp32 unless
``save_dtype``), tokenizer, AdamW state keyed by parameter index, the averaging state, the loss scaler,
and ``qrobust_state.json`` (step, tokens, LR, phase). It is written atomically, so the last folder present
is complete and a killed run resumes from it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..io.files import AVERAGING_FILE, MASTER_FILE
from ..models import save_checkpoint
from .averages import RunningAverages, swapped_parameters
from .checkpoints import averaged_runs, ckpt_dir, main_schedule, write_manifest
from .parallel import full_optimizer_state, gather_weights, to_full
from .precision import Precision
from .runtime import Runtime
from .schedule import Schedule
from .throughput import Throughput
from .state import flatten_optimizer_state


@dataclass
class TrainedState:
    """What one checkpoint saves of a run segment in progress."""

    base: nn.Module
    host: nn.Module | None  # the model rank 0 writes from (see parallel.host_model); None on other ranks
    opt: torch.optim.Optimizer
    avgs: RunningAverages
    precision: Precision
    meter: Throughput
    ema_loss: float | None


@dataclass
class CheckpointWriter:
    """Saves checkpoints of every run of one training config."""

    cfg: TrainConfig
    out: Path
    tokenizer: Any
    rt: Runtime

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.data.seq_len

    def _state(self, run: str, sched: Schedule, step: int, ts: TrainedState, groups: list[dict]) -> dict[str, Any]:
        prev = max(step - 1, 0)  # the LR and phase of the last update that produced these weights
        state = {"step": step, "tokens": step * self.tokens_per_step, "run": run, "lr": sched.lr(prev),
                 "phase": sched.phase(prev), "samples_seen": step * self.cfg.batch_size,
                 "train_loss_ema": ts.ema_loss, "optimizer_groups": _jsonable_groups(groups),
                 "schedule": sched.to_dict(), "data": self.cfg.data.model_dump(), "time": time.time()}
        throughput = {k: v for k, v in ts.meter.summary().items() if v is not None}
        if throughput.get("tokens"):  # how fast this segment ran (wall time: never compared on resume)
            state["throughput"] = throughput
        if ts.precision.state() is not None:
            state["grad_scaler"] = ts.precision.state()
        return state

    def _averaged(self, avgs: RunningAverages) -> dict[str, list[torch.Tensor] | None]:
        """Whole averaged parameters of every average (gathered on every rank under FSDP)."""
        out: dict[str, list[torch.Tensor] | None] = {}
        for a in self.cfg.averaging:
            values = avgs.averaged(a.suffix(self.cfg.checkpoint_every))
            out[a.suffix(self.cfg.checkpoint_every)] = None if values is None else [to_full(v) for v in values]
        return out

    def save(self, run: str, sched: Schedule, step: int, ts: TrainedState) -> None:
        """Checkpoint ``step`` of ``run``, then the manifest. Averaged checkpoints are written first: a raw
        folder on disk implies its averaged siblings are complete, and the raw folder carries the averaging
        state that resume continues from."""
        tensors, groups = flatten_optimizer_state(full_optimizer_state(ts.base, ts.opt, self.rt))
        gather_weights(ts.base, ts.host, self.rt)
        averaged = self._averaged(ts.avgs) if ts.avgs else {}
        avg_tensors, avg_meta = ts.avgs.state() if ts.avgs else ({}, None)
        avg_tensors = {k: to_full(v) for k, v in avg_tensors.items()}
        if self.rt.is_main and ts.host is not None:
            state = self._state(run, sched, step, ts, groups)
            if ts.avgs:
                state["averaging"] = avg_meta
            self._write(ts, run, step, state, tensors, averaged, avg_tensors)
            write_manifest(self.cfg, self.out, main_schedule(self.cfg), self.tokens_per_step)
        self.rt.barrier()

    def _write(self, ts: TrainedState, run: str, step: int, state: dict[str, Any], tensors: dict[str, torch.Tensor],
               averaged: dict[str, list[torch.Tensor] | None], avg_tensors: dict[str, torch.Tensor]) -> None:
        cfg, host, avgs = self.cfg, ts.host, ts.avgs
        was_training = host.training
        host.eval()
        files: dict[str, dict[str, torch.Tensor]] = {}
        for avg_run, a in averaged_runs(cfg, run).items():
            values = averaged[a.suffix(cfg.checkpoint_every)]
            if values is None:
                continue
            meta = {k: state[k] for k in ("step", "tokens", "lr", "phase", "samples_seen", "data", "time")}
            meta.update(run=avg_run, averaged=avgs.info(a.suffix(cfg.checkpoint_every)), averaged_from=run)
            with swapped_parameters(host, values):
                save_checkpoint(self._saved(host), self.tokenizer, ckpt_dir(self.out, avg_run, step), extra=meta,
                                what="averaged checkpoint")
        if avgs:
            files[AVERAGING_FILE] = avg_tensors
        if cfg.save_dtype != "float32":
            files[MASTER_FILE] = {k: v.detach().cpu().contiguous() for k, v in host.state_dict().items()}
        save_checkpoint(self._saved(host), self.tokenizer, ckpt_dir(self.out, run, step), extra=state,
                        extra_tensors=tensors, tensor_files=files)
        host.train(was_training)

    def _saved(self, host: nn.Module) -> nn.Module:
        """The model as written: itself in fp32, else a copy in ``save_dtype`` (training keeps fp32 masters)."""
        if self.cfg.save_dtype == "float32":
            return host
        return copy.deepcopy(host).to(getattr(torch, self.cfg.save_dtype))


def _jsonable_groups(groups: list[dict]) -> list[dict]:
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]
