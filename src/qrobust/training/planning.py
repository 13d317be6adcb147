"""What a training config will cost before it runs: steps, tokens and FLOPs per run (the main run and each
cooldown branch; averages kept while training cost nothing extra), parameters, memory per device under DDP
and FSDP, and GPU-hours on the usual accelerators at an assumed MFU. Reads nothing but the vocabulary's
size (a tokenizer folder or the shards' manifest); builds the model on the meta device only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig, TrainConfig
from ..errors import ConfigError, DataError
from ..models import model_config
from .flops import FlopsPerToken, ParamCounts, flops_per_token, meta_model, param_counts, peak_flops
from .memory import MemoryEstimate, step_memory

PLAN_DEVICES = ("H100 SXM", "H200", "A100")  # the rows of flops.PEAK_TFLOPS GPU-hours are given for
BYTE_VOCAB = 257


@dataclass(frozen=True)
class RunCost:
    """One trained segment: the main run, or a cooldown branch from its start checkpoint to its end."""

    name: str
    steps: int  # optimizer steps this segment trains
    tokens: int  # tokens it trains on
    tokens_at_end: int  # the trajectory's token count at its last checkpoint (a branch inherits its start)
    flops: float


@dataclass(frozen=True)
class Batching:
    """Global batch = micro_batch_size × grad_accum × world_size (samples per optimizer step)."""

    batch_size: int
    micro_batch_size: int
    grad_accum: int
    world_size: int


@dataclass(frozen=True)
class TrainingPlan:
    name: str
    arch: str
    preset: str
    precision: str
    seq_len: int
    vocab_size: int
    vocab_source: str
    batching: Batching
    params: ParamCounts
    flops_per_token: FlopsPerToken
    runs: tuple[RunCost, ...]
    averaged: tuple[str, ...]  # suffixes of the averages kept beside every run
    memory: dict[str, MemoryEstimate]  # "ddp", "fsdp" -> per device
    mfu: float
    gpu_hours: dict[str, float | None]  # device row -> GPU-hours at ``mfu`` (None: no units at this precision)

    @property
    def tokens_per_step(self) -> int:
        return self.batching.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.runs)

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.runs)

    @property
    def total_flops(self) -> float:
        return sum(r.flops for r in self.runs)


def batching(batch_size: int, micro_batch_size: int | None, grad_accum: int | None, world_size: int) -> Batching:
    """Fill in whichever of micro batch and accumulation is missing (accumulation 1 when both are), so that
    micro × accum × world is the global batch; a split that does not divide is one ConfigError."""
    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    per_rank, rest = divmod(batch_size, world_size)
    if rest:
        raise ConfigError(f"batch_size {batch_size} (the global batch) does not divide over {world_size} processes; "
                          "choose a batch_size that is a multiple of the world size")
    micro = micro_batch_size or (per_rank // grad_accum if grad_accum else per_rank)
    accum = grad_accum or per_rank // micro
    if micro * accum * world_size != batch_size:
        raise ConfigError(f"micro_batch_size {micro} × grad_accum {accum} × world size {world_size} = "
                          f"{micro * accum * world_size}, not the global batch_size {batch_size}; change "
                          "micro_batch_size or grad_accum (or leave one out to derive it)")
    return Batching(batch_size, micro, accum, world_size)


def planned_vocab(data: DataConfig, trust_remote_code: bool = False) -> tuple[int, str]:
    """(vocabulary size, where it came from) without tokenizing anything: the shards' manifest (``vocab_size``
    at its top level or under ``tokenizer``; ``data.vocab_size`` while the folder is not prepared yet), a tokenizer
    folder's length, 257 for bytes, ``data.vocab_size`` for a BPE trained at run time (an upper bound: a
    small corpus may give fewer merges)."""
    if data.shards:
        manifest = Path(data.shards) / "manifest.json"
        if not manifest.is_file():
            return data.vocab_size, f"data.vocab_size ({manifest} not prepared yet)"
        try:
            m = json.loads(manifest.read_text())
            return int(m["vocab_size"] if "vocab_size" in m else m["tokenizer"]["vocab_size"]), str(manifest)
        except (ValueError, KeyError, TypeError):
            raise DataError(f"'{manifest}' has no integer 'vocab_size' (top level or under 'tokenizer'); re-run "
                            "qrobust data prepare") from None
    if data.tokenizer == "byte":
        return BYTE_VOCAB, "byte tokenizer"
    if data.tokenizer == "bpe":
        return data.vocab_size, "data.vocab_size (BPE trained at run time)"
    from ..data.tokenizer import load_tokenizer
    return len(load_tokenizer(data.tokenizer, trust_remote_code)), data.tokenizer


def run_costs(cfg: TrainConfig, tokens_per_step: int, flops: FlopsPerToken) -> tuple[RunCost, ...]:
    """The main run and each cooldown branch (which trains only its decay, from its start checkpoint)."""
    def cost(name: str, start: int, end: int) -> RunCost:
        tokens = (end - start) * tokens_per_step
        return RunCost(name, end - start, tokens, end * tokens_per_step, float(tokens) * flops.training)
    return (cost("main", 0, cfg.steps),
            *(cost(b.run_name, b.from_step, b.from_step + b.decay_steps) for b in cfg.branches))


def gpu_hours(total_flops: float, precision: str, mfu: float) -> dict[str, float | None]:
    """GPU-hours on each of PLAN_DEVICES at utilisation ``mfu`` of its peak at ``precision``."""
    peaks = {d: peak_flops(d, precision) for d in PLAN_DEVICES}
    return {d: None if p is None else total_flops / (p * mfu) / 3600 for d, p in peaks.items()}


def plan_training(cfg: TrainConfig, world_size: int = 1, mfu: float = 0.4,
                  trust_remote_code: bool = False) -> TrainingPlan:
    """The cost of training ``cfg`` on ``world_size`` devices; ``mfu`` is the assumed model FLOPs utilisation."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu must be in (0, 1], got {mfu}")
    split = batching(cfg.batch_size, cfg.micro_batch_size, cfg.grad_accum, world_size)
    vocab, source = planned_vocab(cfg.data, trust_remote_code)
    seq = cfg.data.seq_len
    cls, config = model_config(cfg.model.arch, cfg.model.preset, vocab, seq, cfg.model.overrides)
    model = meta_model(cls, config)
    flops, params = flops_per_token(model, config, seq), param_counts(model)
    runs = run_costs(cfg, cfg.batch_size * seq, flops)
    memory = {s: step_memory(config, params.total, flops.matmul_params, split.micro_batch_size * seq, cfg.precision,
                             (s, world_size)) for s in ("ddp", "fsdp")}
    return TrainingPlan(
        name=cfg.name, arch=cfg.model.arch, preset=cfg.model.preset, precision=cfg.precision, seq_len=seq,
        vocab_size=vocab, vocab_source=source, batching=split, params=params, flops_per_token=flops, runs=runs,
        averaged=tuple(a.suffix(cfg.checkpoint_every) for a in cfg.averaging), memory=memory, mfu=mfu,
        gpu_hours=gpu_hours(sum(r.flops for r in runs), cfg.precision, mfu))
