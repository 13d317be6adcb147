"""The quantizer registry and the variant it names: adding a method is one new module with one
``@register_quantizer`` class (the contract it implements is ``quant/base.py``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from ..errors import ConfigError
from .formats.grid import int_format
from .formats.number_format import NumberFormat
from .formats.activations import act_format
from .formats.presets import COMBOS, parse_format

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
    """One quantization variant. ``options`` holds method-specific settings (e.g. GPTQ damping).

    ``format`` names a number format (``formats/presets.py``: ``nvfp4``, ``mxfp4``, ``fp8-e4m3-channel``,
    or a weight+activation combination such as ``w8a8-int8``); it sets ``bits`` and ``group_size`` (and
    ``act``). Integer formats become the plain (bits, group size, sym) variant, so ``int4-g128`` is the
    same variant, with the same record key, as bits=4, group_size=128. ``act``: the format of linear
    inputs (``int8-token``, ``fp8-e4m3-tensor`` …); ``kv``: of the KV cache (``fp8-e4m3-head`` …)."""

    method: str = "rtn"
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    format: str = ""
    act: str = ""
    kv: str = ""

    def __post_init__(self) -> None:
        if self.format:
            self._take_format()
        for role, name in (("act", self.act), ("kv", self.kv)):
            if name:
                act_format(name, role)  # one line for a block the role cannot take
        if dict(self.options).get("smoothquant") and not self.act:
            raise ConfigError("smoothquant migrates activation outliers into the weights: it needs an activation "
                              "format (act=int8-token, format=w8a8-int8 …); drop smoothquant for weight-only")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        if not isinstance(self.group_size, int) or self.group_size == 0 or self.group_size < -1:
            raise ConfigError(f"group size must be -1 (per output channel) or a positive integer, got {self.group_size!r}")
        if self.method not in QUANTIZERS:
            raise _unknown(self.method)
        problem = QUANTIZERS[self.method]().format_problem(self)
        if problem:
            raise ConfigError(f"{self.label}: {problem}")

    def _take_format(self) -> None:
        name, _, kv = self.format.partition("+kv-")
        name, _, act_named = name.partition("+a-")  # the label's own spelling: WEIGHT[+a-ACT][+kv-KV]
        for role, given, own in (("act", act_named, self.act), ("kv", kv, self.kv)):
            if given and own and given != own:
                raise ConfigError(f"format '{self.format}' sets {role}={given}; drop {role}={own}")
        if kv:
            object.__setattr__(self, "kv", kv)
        if act_named:
            object.__setattr__(self, "act", act_named)
        weight, act = COMBOS.get(name, (name, ""))
        if act and self.act and self.act != act:
            raise ConfigError(f"format '{self.format}' sets act={act}; drop act={self.act} or name the weight format")
        fmt = parse_format(weight)
        if fmt.block_size in (0, -2):
            raise ConfigError(f"'{weight}' is an activation / KV-cache format; weights need a block size or channel")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise once, here)
        set_("act", act or self.act)
        set_("bits", fmt.bits)
        set_("group_size", fmt.block_size)
        set_("sym", fmt.sym)
        set_("format", "" if fmt.is_int else weight)

    def number_format(self, grid: str = "reference") -> NumberFormat:
        """The weight format: the named one, or the integer format of (bits, group size, sym) on ``grid``
        (the method's integer grid)."""
        if self.format:
            return parse_format(self.format)
        return int_format(self.bits, self.group_size, self.sym, grid)

    def to_dict(self) -> dict[str, Any]:
        """What defines the variant (records and their keys): the fields, plus what the method's profile
        implies that changed since keys were first written (absent otherwise, so old keys stay valid)."""
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["options"] = dict(self.options)
        for k in ("format", "act", "kv"):  # absent unless set: keys written before formats stay valid
            if not d[k]:
                del d[k]
        d.update(QUANTIZERS[self.method]().implied(dict(self.options)))
        return d

    @property
    def label(self) -> str:
        opts = "".join(f"-{k}={v}" if k != "profile" else f"-{v}" for k, v in self.options)
        return variant_label(self.method, self.bits, self.group_size, self.sym, self.format, self.act, self.kv) + opts


def variant_label(method: Any, bits: Any, group_size: Any, sym: Any = True, format: str | None = "",
                  act: str | None = "", kv: str | None = "") -> str:
    """``rtn-w4g128``, ``gptq-nvfp4``, ``rtn-w8ch+a-int8-token``: the base label with the named weight
    format in place of bits and groups, and the activation / KV-cache formats appended."""
    head = f"{method}-{format}" if format else base_label(method, bits, group_size, sym)
    return head + (f"+a-{act}" if act else "") + (f"+kv-{kv}" if kv else "")


def base_label(method: Any, bits: Any, group_size: Any, sym: Any = True) -> str:
    """``rtn-w4g128``, ``gptq-w3ch`` (per output channel), ``-asym`` appended: the one spelling of a
    variant's method, bits, groups and grid, for labels, tables and figure names."""
    g = "ch" if group_size == -1 else f"g{group_size}"
    return f"{method}-w{bits}{g}{'' if sym is not False else '-asym'}"
