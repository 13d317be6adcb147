"""SmoothQuant (Xiao et al. 2022): migrate activation outliers into the weights before W8A8 quantization.

Per input channel j of a group of linears sharing one input: s_j = max|X_j|^α / max|W_j|^(1−α), with
max|X_j| the calibrated amax of channel j over the calibration tokens (the FP model's activations) and
max|W_j| the largest |weight| of column j over the group's linears (both clamped to ≥ 1e-5, as the
authors' code does). The preceding norm's weight (and bias) is divided by s and the linears' columns
multiplied by s — the FP function is unchanged — and only then are the weights quantized. Groups are
the norm → linear mappings of AWQ's layouts (``methods/awq_mappings.py``: input norm → q,k,v or fused
qkv; post-attention norm → gate,up or h_to_4h), the mappings llm-compressor's SmoothQuantModifier uses;
linear → linear folds are not smoothed. The option is ``smoothquant=α`` of rtn and gptq (α in (0, 1]).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ...errors import ConfigError
from ..methods.awq import fold
from ..methods.awq_mappings import Mapping, known_mappings
from ..timing import calibrating
from .blocks import decoder_layers

FLOOR = 1e-5


def block_mappings(block: nn.Module, local: dict[str, nn.Linear], kind: str) -> list[Mapping]:
    """The norm → linears mappings of one block whose linears are all selected (``local``: by
    block-local name); one clear line for an architecture with no known layout."""
    maps = known_mappings(block, set(local))
    if maps is None:
        raise ConfigError(f"smoothquant: no norm → linear layout is known for model type '{kind}' (known: the "
                          "AWQ layouts, llama and gpt_neox); drop smoothquant")
    return [m for m in maps if not isinstance(m.prev, nn.Linear)]


def model_mappings(model: nn.Module, layers: dict[str, nn.Linear]
                   ) -> Iterator[tuple[nn.Module, dict[str, nn.Linear], list[Mapping]]]:
    """(block, its selected linears by local name, its mappings) for every decoder block."""
    blocks = decoder_layers(model)
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if blocks is None:
        raise ConfigError(f"smoothquant: no decoder blocks found in model type '{kind}'; drop smoothquant")
    names = {id(m): n for n, m in model.named_modules()}
    for block in blocks:
        base = names[id(block)] + "."
        local = {n[len(base):]: lin for n, lin in layers.items() if n.startswith(base)}
        yield block, local, block_mappings(block, local, kind)


def touched(model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """The norm parameters a fold changes (restored on exit with the weights)."""
    out = {}
    for bi, (_, _, maps) in enumerate(model_mappings(model, layers)):
        for m in maps:
            for pname, p in m.prev.named_parameters(recurse=False):
                out[f"smoothquant.{bi}.{m.name}.{pname}"] = p
    return out


def amax_hooks(maps: list[Mapping], local: dict[str, nn.Linear], amax: dict[int, torch.Tensor]) -> list:
    """Pre-hooks keeping each mapping's per-channel input amax (keyed by the mapping's id)."""
    def hook(key: int):
        def pre(mod: nn.Module, args: tuple) -> None:
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            amax[key] = a if key not in amax else torch.maximum(amax[key], a)
        return pre
    return [local[m.layers[0]].register_forward_pre_hook(hook(id(m))) for m in maps]


def smoothing_scales(m: Mapping, local: dict[str, nn.Linear], x_amax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = max|X|^α / max|W|^(1−α) per input channel of the mapping's linears."""
    w = torch.cat([local[n].weight.detach().abs().float() for n in m.layers]).amax(dim=0).clamp(min=FLOOR)
    return (x_amax.clamp(min=FLOOR).pow(alpha) / w.pow(1 - alpha)).clamp(min=FLOOR)


def smooth_block(maps: list[Mapping], local: dict[str, nn.Linear], amax: dict[int, torch.Tensor],
                 alpha: float) -> None:
    """Fold every mapping's scales (norm ÷ s, columns × s) in place."""
    for m in maps:
        if id(m) not in amax:
            raise ConfigError(f"smoothquant: '{m.layers[0]}' saw no calibration input; exclude it")
        fold(m, local, smoothing_scales(m, local, amax[id(m)], alpha))


@torch.no_grad()
def smooth_model(model: nn.Module, layers: dict[str, nn.Linear], tokens: torch.Tensor, alpha: float,
                 batch_size: int) -> None:
    """In memory: calibrate every mapping's input amax on the FP model in one pass, then fold."""
    plan = list(model_mappings(model, layers))
    amax: dict[int, torch.Tensor] = {}
    handles = [h for _, local, maps in plan for h in amax_hooks(maps, local, amax)]
    device = next(model.parameters()).device
    try:
        with calibrating():
            for b in torch.split(tokens, batch_size):
                model(input_ids=b.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for _, local, maps in plan:
        smooth_block(maps, local, amax, alpha)
