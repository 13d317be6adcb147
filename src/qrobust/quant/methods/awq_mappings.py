"""AWQ's layer mappings by architecture: which op's output feeds which linears (scaled together, the
inverse scale folded into that op) and whose output judges a scale. A registry keyed by architecture:
adding one is one ``@register_mapping(name, requires=...)`` function returning its mappings; a block
gets the first registered layout whose module names it has (``requires``), else the generic rule
(``generic_mappings``: an input group is scaled where its input *is* the output of a norm or a linear).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ...registries import Registry
from ..pipelines.staged import probe_block


@dataclass
class Mapping:
    """Scale the input channels of ``layers``; fold the inverse into ``prev``; judge by ``inspect``'s output."""

    name: str
    prev: nn.Module
    layers: list[str]  # block-local linear names, scaled together
    inspect: list[nn.Module]  # modules whose output MSE is the loss (the linears themselves if no parent)


Build = Callable[[dict[str, nn.Module]], list[Mapping]]  # the block's modules by local name -> its mappings


@dataclass(frozen=True)
class Layout:
    """One architecture's block layout: the module names that identify it, and its mappings."""

    name: str
    requires: frozenset[str]
    build: Build


MAPPINGS: Registry[Layout] = Registry("AWQ layout")


def register_mapping(name: str, requires: Iterable[str]) -> Callable[[Build], Build]:
    """Decorator: blocks that have every module named in ``requires`` get ``build``'s mappings."""
    return MAPPINGS.register(name, lambda fn: Layout(name, frozenset(requires), fn))  # type: ignore[arg-type,return-value]


def get_layout(name: str) -> Layout:
    return MAPPINGS.lookup(name)


def layout_of(block: nn.Module) -> Layout | None:
    """The first registered layout whose required module names ``block`` has."""
    names = {n for n, _ in block.named_modules()}
    return next((lay for lay in MAPPINGS.values() if lay.requires <= names), None)


def known_mappings(block: nn.Module, names: set[str]) -> list[Mapping] | None:
    """The mappings of ``block``'s registered layout (None when none fits) that scale only selected
    linears: a mapping scales all its linears or none (an unselected one would be left scaled but
    unquantized, and its prev op must not be a linear we quantize before folding)."""
    layout = layout_of(block)
    if layout is None:
        return None
    return [m for m in layout.build(dict(block.named_modules())) if set(m.layers) <= names]


@register_mapping("llama", requires=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                                     "post_attention_layernorm"))
def llama(mods: dict[str, nn.Module]) -> list[Mapping]:
    """Llama-like blocks (Mistral, Qwen2, …): input norm → q,k,v through the attention; v → o when shapes
    match; post-attention norm → gate,up through the MLP; up → down."""
    maps = [Mapping("attn_in", mods["input_layernorm"], ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    [mods["self_attn"]])]
    if mods["self_attn.v_proj"].weight.shape == mods["self_attn.o_proj"].weight.shape:
        maps.append(Mapping("attn_out", mods["self_attn.v_proj"], ["self_attn.o_proj"], [mods["self_attn.o_proj"]]))
    maps.append(Mapping("mlp_in", mods["post_attention_layernorm"], ["mlp.gate_proj", "mlp.up_proj"], [mods["mlp"]]))
    maps.append(Mapping("mlp_out", mods["mlp.up_proj"], ["mlp.down_proj"], [mods["mlp.down_proj"]]))
    return maps


@register_mapping("gpt_neox", requires=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                        "mlp.dense_4h_to_h", "input_layernorm", "post_attention_layernorm"))
def gpt_neox(mods: dict[str, nn.Module]) -> list[Mapping]:
    """GPT-NeoX: input norm → fused qkv; post-attention norm → h_to_4h (the GELU before 4h_to_h cannot
    take a folded scale, so 4h_to_h is only clipped, as the attention output dense is, as in AutoAWQ)."""
    return [Mapping("attn_in", mods["input_layernorm"], ["attention.query_key_value"],
                    [mods["attention.query_key_value"]]),
            Mapping("mlp_in", mods["post_attention_layernorm"], ["mlp.dense_h_to_4h"], [mods["mlp.dense_h_to_4h"]])]


def is_norm(mod: nn.Module, dim: int) -> bool:
    w = getattr(mod, "weight", None)
    return "norm" in type(mod).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == dim


def generic_mappings(block: nn.Module, linears: dict[str, nn.Linear], run_one: Callable[[], Any]
                     ) -> list[Mapping]:
    """Scale an input group where its input tensor *is* the output of a norm or a linear in the block."""
    producer: dict[int, nn.Module] = {}
    keep: list[torch.Tensor] = []  # keep outputs alive while ids are compared

    def on_exit(mod, inp, out):
        if isinstance(out, torch.Tensor):
            producer[id(out)] = mod
            keep.append(out)
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(on_exit) for m in block.modules() if m is not block]
    handles += [lin.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0])) for n, lin in linears.items()]
    try:
        probe = probe_block(block, linears, run_one)
        run_one()
    finally:
        for h in handles:
            h.remove()
    maps = []
    for group in probe.groups:
        x = inputs.get(group[0])
        prev = producer.get(id(x)) if x is not None else None
        if prev is None:
            continue
        d = x.shape[-1]
        if is_norm(prev, d) or (isinstance(prev, nn.Linear) and prev.out_features == d):
            maps.append(Mapping(f"group:{group[0]}", prev, list(group), [linears[n] for n in group]))
    return maps
