"""Calibration plumbing shared by the block-wise methods (GPTQ, AWQ): find the decoder blocks, split
the calibration set into batches, and capture the inputs (args and kwargs) of the first block."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .staged import StopForward


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of decoder blocks (length = num_hidden_layers), found by shape not by name."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and n:
            return mod
    return None


def calibration_batches(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    return [b.to(device) for b in torch.split(calibration, batch_size)]


def first_block_inputs(model: nn.Module, block: nn.Module, batches: list[torch.Tensor]) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of ``block`` for every batch; the model stops right there (nothing after runs)."""
    inputs: list[tuple[tuple, dict]] = []

    def grab(mod, args, kwargs):
        inputs.append((args, kwargs))
        raise StopForward

    h = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for b in batches:
            try:
                model(input_ids=b, use_cache=False)
            except StopForward:
                pass
    finally:
        h.remove()
    return inputs


def next_inputs(outs: list[Any], inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """The next block's (args, kwargs): this block's hidden-state output in place of its first arg."""
    return [(((o[0] if isinstance(o, (tuple, list)) else o),) + tuple(a[1:]), k) for o, (a, k) in zip(outs, inputs)]


def first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The first sequence of a calibration batch (every tensor whose dim 0 is the batch is sliced):
    enough to watch which linears share inputs, at 1/batch of the cost."""
    n = args[0].shape[0]

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            return v[:1]
        if type(v) in (tuple, list):
            return type(v)(cut(u) for u in v)
        return v
    if n == 1:
        return args, kwargs
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def split_by_block(model: nn.Module, blocks: nn.ModuleList | None, layers: dict[str, nn.Linear]
                   ) -> tuple[dict[int, dict[str, nn.Linear]], dict[str, nn.Linear]]:
    """Selected linears per block index, and those outside any block."""
    in_blocks: dict[int, dict[str, nn.Linear]] = {}
    if blocks is not None:
        prefix = {id(m): n for n, m in model.named_modules()}
        for bi, block in enumerate(blocks):
            base = prefix[id(block)]
            in_blocks[bi] = {n: l for n, l in layers.items() if n.startswith(base + ".")}
    rest = {n: l for n, l in layers.items() if not any(n in d for d in in_blocks.values())}
    return in_blocks, rest
