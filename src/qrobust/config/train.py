"""Typed configuration of a training run: data, model, optimizer, schedule, cooldown branches, averages."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..names import check_name
from .base import Strict
from .monitor import MonitorConfig


class DataConfig(Strict):
    """Where text comes from and how it becomes token blocks."""

    corpus: str = "builtin"
    field: str | None = None  # text field for jsonl / HF datasets (default "text")
    max_chars: int | None = Field(default=4_000_000, gt=0)
    val_fraction: float = Field(default=0.05, gt=0.0, lt=1.0)
    seq_len: int = Field(default=128, ge=8)
    tokenizer: str = "bpe"  # "bpe", "byte", or a path to an HF tokenizer folder
    vocab_size: int = Field(default=2048, ge=258)
    seed: int = 0
    # a folder written by ``qrobust data prepare``: train from its memory-mapped token files (its tokenizer,
    # its train/val split); corpus, max_chars, val_fraction and vocab_size are then the shards' own
    shards: str | None = None

    omit_if_default = ("shards",)

    @field_validator("shards")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # kept absolute in checkpoints and manifests, so a sweep run from another folder finds the shards
        return str(Path(v).expanduser().absolute()) if v else v


class ModelConfig(Strict):
    arch: Literal["gpt_neox", "llama"] = "gpt_neox"
    preset: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(Strict):
    """AdamW with the paper's defaults."""

    lr: float = Field(default=3e-3, gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)


class ScheduleConfig(Strict):
    """LR schedule of the main run. ``wsd`` without ``decay_steps`` is warmup-then-constant."""

    kind: Literal["constant", "cosine", "wsd"] = "constant"
    warmup_steps: int = Field(default=100, ge=0)
    final_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    decay_steps: int = Field(default=0, ge=0)  # wsd: length of the final decay
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"


class BranchConfig(Strict):
    """A cooldown branch: start at a stable-phase checkpoint, decay over ``decay_steps``."""

    from_step: int = Field(ge=1)
    decay_steps: int = Field(ge=1)
    shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    final_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return check_name(v, "branch name")  # the run's folder is checkpoints/<name>

    @property
    def run_name(self) -> str:
        return self.name or f"decay{self.from_step}"


class TrainAverageConfig(Strict):
    """Averaged weights kept during training and saved beside the raw ones at every checkpoint.

    ``ema``: per-step exponential moving average e ← β·e + (1 − β)·θ (after every optimizer step).
    ``lawa``: uniform mean of the last ``window`` snapshots taken every ``every`` steps (default: at
    each checkpoint)."""

    kind: Literal["ema", "lawa"]
    beta: float = Field(default=0.999, gt=0, lt=1)
    window: int = Field(default=5, ge=1)
    every: int | None = Field(default=None, ge=1)
    name: str | None = None  # run-name suffix; default ema<β> / lawa<window>[e<every>]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return check_name(v, "averaged run name")  # the run's folder is checkpoints/<run>-<name>

    def suffix(self, checkpoint_every: int) -> str:
        """The averaged run of run R is called ``R-<suffix>``."""
        if self.name:
            return self.name
        if self.kind == "ema":
            return f"ema{self.beta:g}"
        every = self.every or checkpoint_every
        return f"lawa{self.window}" + (f"e{every}" if every != checkpoint_every else "")


EXECUTION_FIELDS = ("device", "precision", "micro_batch_size", "grad_accum", "compile", "distributed", "backend",
                    "logging", "peak_tflops")
"""How a run executes, not what it computes: they may change when a run is resumed (another world size, another
machine). ``precision`` and ``save_dtype`` change the numbers; they are listed for the dump rule only."""


class TrainConfig(Strict):
    """``batch_size`` is the global batch: samples per optimizer step, summed over ranks and accumulation.
    ``micro_batch_size`` × ``grad_accum`` × world size must equal it; either may be left out and is derived."""

    name: str = "run"
    out: str = "runs/run"
    seed: int = 0
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    branches: list[BranchConfig] = Field(default_factory=list)
    averaging: list[TrainAverageConfig] = Field(default_factory=list)
    threads: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    micro_batch_size: int | None = Field(default=None, ge=1)
    grad_accum: int | None = Field(default=None, ge=1)
    compile: bool | None = None  # torch.compile the model; default: on for cuda, off on cpu
    save_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    distributed: Literal["ddp", "fsdp"] = "ddp"  # how a torchrun world of >1 process shares the model
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on cuda, gloo on cpu
    logging: list[str] = Field(default_factory=lambda: ["jsonl"])  # trackers: jsonl, tensorboard, wandb
    peak_tflops: float | None = Field(default=None, gt=0)  # per device, for MFU when the device is not in the table
    monitor: MonitorConfig | None = None  # live ΔQ L while training; reads the weights, never part of the identity

    omit_if_default = (*EXECUTION_FIELDS, "save_dtype", "monitor")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "trajectory name")  # a sweep stores it as trajectories/<name>.json

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.schedule.kind == "wsd" and self.schedule.decay_steps > self.steps - self.schedule.warmup_steps:
            raise ValueError("schedule.decay_steps must fit after warmup within steps")
        for b in self.branches:
            if b.from_step % self.checkpoint_every and b.from_step != self.steps:
                raise ValueError(
                    f"branch from_step {b.from_step} is not a checkpoint step (checkpoint_every={self.checkpoint_every})")
            if b.from_step > self.steps:
                raise ValueError(f"branch from_step {b.from_step} is beyond steps={self.steps}")
        if self.micro_batch_size and self.grad_accum and self.batch_size % (self.micro_batch_size * self.grad_accum):
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size × grad_accum = "
                             f"{self.micro_batch_size * self.grad_accum}; batch_size is the global batch")
        if "jsonl" not in self.logging:
            raise ValueError("logging must include 'jsonl' (the step log that resume and reports read)")
        names = [a.suffix(self.checkpoint_every) for a in self.averaging]
        if len(set(names)) != len(names):
            raise ValueError(f"averaging entries must have distinct names, got {names}; set 'name' on one")
        return self
