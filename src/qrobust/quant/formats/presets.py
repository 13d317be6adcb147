"""Format names: the presets users write (``nvfp4``, ``mxfp4``, ``fp8-e4m3-channel``, ``int4-g128`` …), the
general spelling ``<element>-<block>[-<scale>][-asym][-sr]`` they abbreviate, and the weight+activation
combinations (``w8a8-int8``, ``w4a8-fp8`` …). Adding a preset is one entry here; nothing else names one.

    element  int2 … int8 | fp8-e4m3 | fp8-e5m2 | fp6-e2m3 | fp6-e3m2 | fp4-e2m1
    block    g<N> | channel (weights: per output row) | token (activations: per row, dynamic)
             | tensor (activations: one calibrated scale) | head (KV cache: one per attention head)
    scale    fp32 (default) | fp16 | e8m0 | e4m3 (with an fp32 tensor scale)
"""
from __future__ import annotations

import re

from ...errors import ConfigError
from ...registries import Registry
from .number_format import NumberFormat

FORMATS: Registry[NumberFormat] = Registry("number format")


def _preset(name: str, element: str, block: int, scale: str = "fp32") -> None:
    FORMATS[name] = NumberFormat(element, block, scale, name=name)


for _b in (2, 3, 4, 8):
    _preset(f"int{_b}-g128", f"int{_b}", 128)
    _preset(f"int{_b}-channel", f"int{_b}", -1)
_preset("fp8-e4m3-channel", "e4m3", -1)
_preset("fp8-e5m2-channel", "e5m2", -1)
_preset("mxfp4", "e2m1", 32, "e8m0")
_preset("mxfp6-e2m3", "e2m3", 32, "e8m0")
_preset("mxfp6-e3m2", "e3m2", 32, "e8m0")
_preset("mxfp8-e4m3", "e4m3", 32, "e8m0")
_preset("mxfp8-e5m2", "e5m2", 32, "e8m0")
_preset("nvfp4", "e2m1", 16, "e4m3")

# weight format + activation format of the W·A· names deployment uses
COMBOS: dict[str, tuple[str, str]] = {
    "w8a8-int8": ("int8-channel", "int8-token"),
    "w8a8-fp8": ("fp8-e4m3-channel", "fp8-e4m3-token"),
    "w4a8-int8": ("int4-g128", "int8-token"),
    "w4a8-fp8": ("int4-g128", "fp8-e4m3-token"),
}

_ELEMENT = r"(?P<elem>int[2-8]|fp8-e4m3|fp8-e5m2|fp6-e2m3|fp6-e3m2|fp4-e2m1)"
_BLOCK = r"(?P<block>g[1-9][0-9]*|channel|token|tensor|head)"
_GRAMMAR = re.compile(_ELEMENT + "-" + _BLOCK + r"(?:-(?P<scale>fp32|fp16|e8m0|e4m3))?(?P<asym>-asym)?(?P<sr>-sr)?$")
_BLOCKS = {"channel": -1, "token": -1, "tensor": 0, "head": -2}


def parse_format(name: str) -> NumberFormat:
    """The format a name stands for (a preset or the general spelling); one clear line otherwise."""
    if name in FORMATS:
        return FORMATS[name]
    m = _GRAMMAR.match(name) if isinstance(name, str) else None
    if m is None:
        raise ConfigError(f"unknown number format '{name}'; presets: {FORMATS.known()}; or spell one as "
                          "<element>-<block>[-<scale>][-asym][-sr], e.g. fp4-e2m1-g32-e8m0")
    elem = m["elem"].split("-")[-1]
    block = _BLOCKS.get(m["block"]) if m["block"] in _BLOCKS else int(m["block"][1:])
    return NumberFormat(elem, block, m["scale"] or "fp32", sym=not m["asym"], stochastic=bool(m["sr"]), name=name)
