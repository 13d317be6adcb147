"""Where the KV cache is written, and a stand-in cache that sees (and may replace) what is written.

Transformers' attention modules compute keys and values, apply the rotary embedding to the keys, and,
when they get a cache, call ``cache.update(key_states, value_states, layer_idx, ...)`` with tensors of
shape [batch, kv_heads, seq, head_dim]: exactly what a KV cache stores (post-RoPE keys, as vLLM's FP8
cache and llm-compressor's calibration see them). A forward pre-hook on each attention module passes a
stand-in as that cache argument (as compressed-tensors' ``QuantizedKVCache`` does); its ``update``
hands keys and values to a function (observe, or fake-quantize) and then to the real cache, if the
model passed one, so generation with a cache still works. This covers fused-qkv models (GPT-NeoX) and
separate k_proj/v_proj models (Llama, Qwen, Mistral …) alike, with no per-architecture code: the
attention module is the innermost module whose ``forward`` takes a cache argument.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from ...errors import ConfigError

CACHE_ARGS = ("cache", "past_key_values", "past_key_value", "layer_past")  # across transformers versions
KVFn = Callable[[torch.Tensor, str], torch.Tensor]  # (keys or values, "k" | "v") -> what the cache stores


def cache_arg(mod: nn.Module) -> str | None:
    """The name of the KV-cache argument of ``mod.forward``, or None."""
    try:
        params = inspect.signature(mod.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((a for a in CACHE_ARGS if a in params), None)


def attention_modules(root: nn.Module, prefix: str = "") -> dict[str, tuple[nn.Module, str]]:
    """name -> (module, its cache argument) for every attention module under ``root``: the innermost
    modules taking a cache argument (a decoder layer passes its own on to its attention)."""
    arg_of: dict[type, str | None] = {}
    found: dict[str, tuple[nn.Module, str]] = {}
    for name, mod in root.named_modules():
        if type(mod) not in arg_of:
            arg_of[type(mod)] = cache_arg(mod)
        arg = arg_of[type(mod)]
        if arg is None:
            continue
        for outer in [n for n in found if not n or name.startswith(n + ".")]:
            del found[outer]  # a decoder layer passes its cache on: its attention is what writes it
        found[name] = (mod, arg)
    return {(prefix + n) if n else prefix.rstrip("."): v for n, v in found.items()}


def check_kv_model(model: nn.Module, kv: str) -> dict[str, tuple[nn.Module, str]]:
    """The attention modules of ``model``; one clear line naming the model type when there are none."""
    found = attention_modules(model)
    if not found:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(f"kv={kv}: model type '{kind}' has no attention module taking a KV cache argument "
                          f"({', '.join(CACHE_ARGS)}); KV-cache quantization needs one: drop kv")
    return found


class KVStandIn:
    """A cache for one attention call: ``update`` passes keys and values through ``fn``, then to the
    real cache when there is one; anything else is asked of the real cache."""

    def __init__(self, fn: KVFn, real: Any):
        self._fn, self._real = fn, real

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        k, v = self._fn(key_states, "k"), self._fn(value_states, "v")
        if self._real is not None:
            return self._real.update(k, v, *args, **kwargs)
        return k, v

    def __getattr__(self, name: str) -> Any:
        real = self.__dict__.get("_real")
        if real is None:
            raise AttributeError(name)
        return getattr(real, name)


def hook_cache(mod: nn.Module, arg: str, fn: KVFn) -> torch.utils.hooks.RemovableHandle:
    """Make every forward of attention module ``mod`` write its cache through ``fn``."""
    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs[arg] = KVStandIn(fn, kwargs.get(arg))
        return args, kwargs
    return mod.register_forward_pre_hook(pre, with_kwargs=True)
