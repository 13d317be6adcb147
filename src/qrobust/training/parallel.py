"""How the model is shared across ranks: DDP (replicas) or FSDP2 (``fully_shard``), and torch.compile.

Checkpoints are always the whole model: under FSDP the full weights and optimizer state are gathered
(``torch.distributed.checkpoint.state_dict`` with ``full_state_dict``) and rank 0 writes the same folder
a single process writes. So any checkpoint resumes under any world size and either sharing mode, and every
reader downstream sees a plain Hugging Face folder.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from torch import nn

from .runtime import Runtime


def wrap_model(model: nn.Module, rt: Runtime, compile_model: bool) -> nn.Module:
    """The module a training step calls: ``model`` on this rank's device, shared as ``rt.mode`` says, compiled
    when asked. ``model`` itself stays reachable with :func:`base_module`."""
    model.to(rt.device)
    wrapped: nn.Module = model
    if rt.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    elif rt.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        layer_classes = set(getattr(model, "_no_split_modules", None) or [])
        for m in model.modules():
            if type(m).__name__ in layer_classes:
                fully_shard(m)
        fully_shard(model)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped


def base_module(wrapped: nn.Module) -> nn.Module:
    """The Hugging Face model inside compile/DDP wrappers (FSDP2 shards it in place, it is not a wrapper)."""
    m = getattr(wrapped, "_orig_mod", wrapped)
    return getattr(m, "module", m) if type(m).__name__ == "DistributedDataParallel" else m


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, rt: Runtime, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on every micro batch but the last of a step (accumulate locally)."""
    if enabled or not rt.distributed:
        yield
        return
    if rt.mode == "fsdp":
        base = base_module(wrapped)
        base.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            base.set_requires_gradient_sync(True)
        return
    ddp = getattr(wrapped, "_orig_mod", wrapped)
    with ddp.no_sync():
        yield


def to_full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor on the host (a collective for a sharded DTensor: every rank must call it)."""
    from torch.distributed.tensor import DTensor
    if isinstance(t, DTensor):
        return t.full_tensor().cpu()
    return t.detach().cpu()


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``ref``: sharded the same way for a DTensor, on its device otherwise."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
    return full.to(ref.device)


def host_model(base: nn.Module, rt: Runtime) -> nn.Module | None:
    """The model rank 0 saves from: ``base`` itself, or under FSDP a host copy made before sharding."""
    if rt.mode != "fsdp":
        return base
    return copy.deepcopy(base).cpu() if rt.is_main else None


def gather_weights(base: nn.Module, host: nn.Module | None, rt: Runtime) -> None:
    """Bring the host model up to date with the trained weights (a collective under FSDP)."""
    if rt.mode != "fsdp":
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(base, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if host is not None:
        host.load_state_dict(sd)


def param_names(base: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Fully qualified names of the optimizer's parameters, in its index order."""
    by_id = {id(p): n for n, p in base.named_parameters()}
    return [by_id[id(p)] for g in opt.param_groups for p in g["params"]]


def full_optimizer_state(base: nn.Module, opt: torch.optim.Optimizer, rt: Runtime) -> dict[str, Any]:
    """The optimizer's state dict with whole tensors, keyed by parameter index like a single process's."""
    if rt.mode != "fsdp":
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = get_optimizer_state_dict(base, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:  # with cpu_offload only rank 0 receives the whole state
        return {"state": {}, "param_groups": []}
    index = {n: i for i, n in enumerate(param_names(base, opt))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": {index[n]: st for n, st in sd["state"].items()}, "param_groups": groups}


def load_optimizer_state(base: nn.Module, opt: torch.optim.Optimizer, sd: dict[str, Any], rt: Runtime) -> None:
    """Load an index-keyed whole optimizer state (sharded onto the parameters under FSDP)."""
    if rt.mode != "fsdp":
        opt.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = param_names(base, opt)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    state = {names[int(i)]: st for i, st in sd["state"].items()}
    set_optimizer_state_dict(base, opt, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
