"""The quantizer registry and the variant it names: adding a method is one new module with one
``@register_quantizer`` class (the contract it implements is ``quant/base.py``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from ..errors import ConfigError

# name -> quantizer class (a ``base.Quantizer`` subclass; typed loosely so the contract can name QuantSpec)
QUANTIZERS: dict[str, type] = {}

Q = TypeVar("Q", bound=type)


def register_quantizer(cls: Q) -> Q:
    """Class decorator: make ``cls`` (a ``Quantizer`` with a ``name``) available as ``method=<name>``."""
    QUANTIZERS[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown quantization method '{name}'; known: {', '.join(sorted(QUANTIZERS))}")


def get_quantizer(name: str) -> Any:
    """A fresh instance of the quantizer registered as ``name`` (a ``base.Quantizer``)."""
    if name not in QUANTIZERS:
        raise _unknown(name)
    return QUANTIZERS[name]()


def quantizer_names(**traits: Any) -> list[str]:
    """Registered names, sorted, whose class attributes equal ``traits`` (e.g. ``streamable=True``)."""
    return sorted(n for n, cls in QUANTIZERS.items() if all(getattr(cls, k, None) == v for k, v in traits.items()))


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
            raise _unknown(self.method)

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
