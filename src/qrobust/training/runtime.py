"""Where a training process runs: its rank in a torchrun world, its device, its process group.

One process (no ``torchrun``) is a world of size 1 with no process group, so the single-process path runs
exactly the code it always ran. Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) names the rank; the backend is nccl on CUDA and gloo on CPU unless the config says which.
Every check that can refuse a run is made before the process group starts (:func:`check_execution`), so the
``--nproc`` launcher refuses bad input with one line before any worker starts.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import TrainConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    """Rank, world size and local rank of this process (``torchrun``'s environment; 0, 1, 0 without it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> "World":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("LOCAL_WORLD_SIZE", 1)))


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: rank, device, how the model is shared (``single``, ``ddp``, ``fsdp``)."""

    world: World
    device: torch.device
    mode: str
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode != "single"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a scalar over all ranks (itself in one process)."""
        if not self.distributed:
            return value
        v = value.detach().clone()
        dist.all_reduce(v, op=dist.ReduceOp.SUM)
        return v / self.world.size


def device_kind(cfg: TrainConfig) -> str:
    """``cuda`` or ``cpu``: what ``device: auto`` means on this machine."""
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def backend_for(cfg: TrainConfig) -> str:
    return cfg.backend if cfg.backend != "auto" else ("nccl" if device_kind(cfg) == "cuda" else "gloo")


def check_execution(cfg: TrainConfig, world_size: int, local_size: int) -> None:
    """Refuse, in one line, a device, precision, backend or batch this machine and world cannot run
    (``local_size``: the processes on this node)."""
    kind = device_kind(cfg)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: cuda asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                          "use device: cpu (or auto)")
    if cfg.backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend: nccl needs CUDA GPUs, and this machine has none; use backend: gloo (or auto)")
    if cfg.backend == "nccl" and kind == "cpu":
        raise ConfigError("backend: nccl cannot train on device: cpu; use backend: gloo (or auto)")
    if cfg.precision == "fp16-mixed" and kind == "cpu":
        raise ConfigError("precision: fp16-mixed needs a CUDA device (loss scaling of fp16 autocast); "
                          "on CPU use bf16-mixed or fp32")
    if kind == "cuda" and local_size > torch.cuda.device_count():
        raise ConfigError(f"{local_size} processes per node asked for, but this node has {torch.cuda.device_count()} "
                          "CUDA GPU(s); use at most one process per GPU (--nproc)")
    if kind == "cpu" and local_size > (os.cpu_count() or 1):
        raise ConfigError(f"{local_size} processes per node asked for, but this node has {os.cpu_count()} CPU "
                          "core(s); use at most one process per core (--nproc)")
    batch_layout(cfg, world_size)


@dataclass(frozen=True)
class BatchLayout:
    """How the global batch is cut: ``world × accum`` micro batches of ``micro`` samples."""

    micro: int
    accum: int
    world: int

    @property
    def per_rank(self) -> int:
        return self.micro * self.accum


def batch_layout(cfg: TrainConfig, world_size: int) -> BatchLayout:
    """Micro batch and accumulation steps for ``world_size`` ranks; one line when the global batch cannot be
    cut that way (``batch_size`` is the global batch: it never changes with the world size)."""
    b = cfg.batch_size
    if b % world_size:
        raise ConfigError(f"batch_size {b} (the global batch) is not divisible by the {world_size} processes; "
                          "use a batch_size that is a multiple of the world size")
    per_rank = b // world_size
    micro, accum = cfg.micro_batch_size, cfg.grad_accum
    if micro is None and accum is None:
        micro, accum = per_rank, 1
    elif micro is None:
        micro = per_rank // accum if per_rank % accum == 0 else 0
    elif accum is None:
        accum = per_rank // micro if per_rank % micro == 0 else 0
    if not micro or not accum or micro * accum != per_rank:
        raise ConfigError(f"batch_size {b} ≠ micro_batch_size {cfg.micro_batch_size} × grad_accum {cfg.grad_accum} × "
                          f"{world_size} process(es); batch_size is the global batch: set micro_batch_size or "
                          "grad_accum so that the product matches")
    return BatchLayout(micro, accum, world_size)


def start_runtime(cfg: TrainConfig) -> Runtime:
    """Join the torchrun world (if any) and pick this rank's device."""
    world = World.from_env()
    check_execution(cfg, world.size, world.local_size)
    kind = device_kind(cfg)
    device = torch.device("cuda", world.local_rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    if world.size == 1:
        return Runtime(world, device, "single")
    backend = backend_for(cfg)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                device_id=device if kind == "cuda" else None)
    return Runtime(world, device, cfg.distributed, backend)


def stop_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
