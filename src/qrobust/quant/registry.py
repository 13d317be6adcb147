"""Quantizer registry: adding a method is one new module with one ``@register_quantizer`` class."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class QuantSpec:
    """One quantization variant. ``options`` holds method-specific settings (e.g. GPTQ damping)."""

    method: str = "rtn"
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        if not isinstance(self.group_size, int) or self.group_size == 0 or self.group_size < -1:
            raise ConfigError(f"group size must be -1 (per output channel) or a positive integer, got {self.group_size!r}")
        if self.method not in QUANTIZERS:
            raise ConfigError(f"unknown quantization method '{self.method}'; known: {', '.join(sorted(QUANTIZERS))}")

    def to_dict(self) -> dict[str, Any]:
        """What defines the variant (records and their keys): the fields, plus what the method's profile
        implies that changed since keys were first written (absent otherwise, so old keys stay valid)."""
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["options"] = dict(self.options)
        d.update(QUANTIZERS[self.method]().implied(dict(self.options)))
        return d

    @property
    def label(self) -> str:
        opts = "".join(f"-{k}={v}" if k != "profile" else f"-{v}" for k, v in self.options)
        return base_label(self.method, self.bits, self.group_size, self.sym) + opts


def base_label(method: Any, bits: Any, group_size: Any, sym: Any = True) -> str:
    """``rtn-w4g128``, ``gptq-w3ch`` (per output channel), ``-asym`` appended: the one spelling of a
    variant's method, bits, groups and grid, for labels, tables and figure names."""
    g = "ch" if group_size == -1 else f"g{group_size}"
    return f"{method}-w{bits}{g}{'' if sym is not False else '-asym'}"


class Quantizer:
    """Base class. ``quantize_layers`` replaces each selected weight in place with its fake-quantized value."""

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ConfigError for options this method does not know (checked before any work starts)."""
        if options:
            raise ConfigError(f"method '{self.name}' takes no options, got: {', '.join(sorted(options))}")

    def implied(self, options: dict[str, Any]) -> dict[str, Any]:
        """Settings a profile implies that change the numbers and must enter the variant's identity
        (``QuantSpec.to_dict``) though the user did not write them; empty for most methods."""
        return {}

    def touched_params(self, model: nn.Module, layers: dict[str, nn.Linear],
                       spec: QuantSpec) -> dict[str, torch.Tensor]:
        """Tensors besides the selected weights this method may change (e.g. AWQ's norm scales), so that
        ``quantized()`` can restore them too."""
        return {}

    def quantize_layers(self, model: nn.Module, layers: dict[str, nn.Linear], spec: QuantSpec,
                        calibration: torch.Tensor | None) -> dict[str, dict[str, float]]:
        """Return per-layer info (at least nothing); weight errors are measured by the caller unless the
        info carries its own ``rel_err`` / ``mse`` (e.g. against AWQ's equivalent weights)."""
        raise NotImplementedError


T = TypeVar("T")


def typed_options(base: T, options: dict[str, Any], method: str) -> T:
    """``base`` (a frozen dataclass of defaults) with ``options`` on top, each checked against its
    default's type; unknown keys and wrong types are one clear line."""
    names = [f.name for f in fields(base)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"unknown {method} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    for k, v in options.items():
        default = getattr(base, k)
        ok = True
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            v = float(v) if ok else v
        elif isinstance(default, str):
            ok = isinstance(v, str)
        if not ok:
            raise ConfigError(f"{method} option '{k}' has the wrong type: {v!r}")
        base = replace(base, **{k: v})
    return base


QUANTIZERS: dict[str, type[Quantizer]] = {}


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    QUANTIZERS[cls.name] = cls
    return cls


def get_quantizer(name: str) -> Quantizer:
    if name not in QUANTIZERS:
        raise ConfigError(f"unknown quantization method '{name}'; known: {', '.join(sorted(QUANTIZERS))}")
    return QUANTIZERS[name]()


