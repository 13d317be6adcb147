"""Optimizer state to and from safetensors (no pickle anywhere in a checkpoint)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    return flatten_optimizer_state(opt.state_dict())


def flatten_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(host tensors named ``state.<param index>.<key>``, JSON-able param groups) of an optimizer state dict."""
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"state.{idx}.{k}"] = t.detach().cpu().clone()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(opt: torch.optim.Optimizer, path: Path, groups: list[dict[str, Any]]) -> None:
    opt.load_state_dict(read_optimizer_state(path, groups))


def read_optimizer_state(path: Path, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The optimizer state dict saved by :func:`flatten_optimizer_state` (tensors on the host)."""
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    # betas arrive from JSON as lists; torch expects tuples
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
