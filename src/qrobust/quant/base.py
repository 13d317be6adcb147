"""The quantizer contract: everything a pipeline (in memory or layer-streamed) and the exporter may ask
of a quantization method, so that none of them ever compares ``spec.method`` to a string.

A quantizer says
- its options (``options_type``, a frozen dataclass of defaults; ``parse_options`` checks a dict),
- how it calibrates (``calibration_flow``): ``none`` (weights only), ``fp`` (each block calibrated on the
  FP model's inputs to it, e.g. AWQ as AutoAWQ runs it) or ``quantized`` (on the outputs of the already
  quantized earlier blocks, e.g. sequential GPTQ), and with what batch size,
- ``quantize_layers(model, layers, spec, calibration)`` for the in-memory pipeline,
- ``quantize_block(job, spec)`` for the layer-streamed pipeline (when ``streamable``; ``stream_problem``
  names what a given variant cannot stream),
- ``records_grid``: whether its per-layer info carries the integer grid it used (what export needs).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, ClassVar, Literal, Sequence, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from .registry import QuantSpec

Flow = Literal["none", "fp", "quantized"]
BlockInputs = Sequence[tuple[tuple, dict]]  # one block's (args, kwargs) per calibration batch


@dataclass
class BlockJob:
    """One decoder block a streaming pipeline hands to a quantizer, with what the pipeline holds for it."""

    module: nn.Module
    linears: dict[str, nn.Linear]  # the selected linears, by their full names in the model
    prefix: str  # the block's own name in the model, with the trailing "."
    inputs: BlockInputs | None  # calibration inputs of this block (None when the flow is "none")
    original: Callable[[str], torch.Tensor]  # a selected linear's FP weight by full name (read again, not held)
    # flow "quantized": where the quantizer may hand each batch's output of the quantized block (batch index,
    # output) when its own last pass computes them anyway; None: the pipeline runs the block itself
    outputs: Callable[[int, Any], None] | None = None


@dataclass
class BlockDone:
    """What quantizing one block gives back: per-layer info, and for flow "fp" the block's FP outputs
    (the next block's calibration inputs, computed while the FP weights were still there); for flow
    "quantized", ``sent_outputs`` says the quantized outputs already went to ``BlockJob.outputs``."""

    info: dict[str, dict[str, Any]]
    fp_outputs: list[Any] | None = None
    sent_outputs: bool = False


class Quantizer:
    """Base class of every method; subclasses set the class attributes and override what they need."""

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False  # calibration tokens are required
    records_grid: ClassVar[bool] = False  # per-layer info carries the LayerGrid used ("grid"): exportable
    streamable: ClassVar[bool] = False  # ``quantize_block`` works (layer streaming)
    activation_quant: ClassVar[bool] = False  # act / kv formats may be fake-quantized on top (hooks)
    options_type: ClassVar[type | None] = None  # frozen dataclass of option defaults; None: no options

    def parse_options(self, options: dict[str, Any]) -> Any:
        """The typed options (``options_type`` with ``options`` on top); ConfigError for what is not known."""
        if self.options_type is None:
            if options:
                raise ConfigError(f"method '{self.name}' takes no options, got: {', '.join(sorted(options))}")
            return None
        return typed_options(self.options_type(), options, self.name.upper())

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ConfigError for options this method does not know (checked before any work starts)."""
        self.parse_options(options)

    def calibration_flow(self, options: dict[str, Any]) -> Flow:
        """Which activations calibrate a block: none, the FP model's, or the quantized earlier blocks'."""
        if self.needs_calibration:
            raise NotImplementedError(f"quantizer '{self.name}' needs calibration: say its calibration_flow")
        return "none"

    def calibration_batch_size(self, options: dict[str, Any]) -> int:
        """Calibration sequences per forward pass (an option of calibrated methods, 8 by default)."""
        return int(getattr(self.parse_options(options), "calib_batch_size", 8))

    def stream_problem(self, options: dict[str, Any]) -> str | None:
        """Why this variant of a ``streamable`` method cannot be layer-streamed (one line), or None."""
        return None

    def format_problem(self, spec: QuantSpec) -> str | None:
        """Why this method cannot quantize ``spec``'s formats (weight, activations, KV cache), one line, or
        None; asked when the spec is made, before any work."""
        return None

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
                        calibration: Any) -> dict[str, dict[str, Any]]:
        """In memory: replace each selected weight in place with its quantized value. Return per-layer
        info; weight errors are measured by the caller unless the info carries its own ``rel_err`` /
        ``mse`` (e.g. against AWQ's equivalent weights), and a ``grid`` entry when ``records_grid``."""
        raise NotImplementedError

    def quantize_block(self, job: BlockJob, spec: QuantSpec) -> BlockDone:
        """Layer-streamed: quantize one block's selected linears in place. By default (weights only,
        flow "none") the in-memory method applied to the block; calibrated methods override it."""
        if self.calibration_flow(dict(spec.options)) != "none":
            raise NotImplementedError(f"quantizer '{self.name}' calibrates: it must implement quantize_block")
        return BlockDone(self.quantize_layers(job.module, job.linears, spec, None))


T = TypeVar("T")


def _checked(default: Any, v: Any) -> tuple[bool, Any]:
    """Whether ``v`` fits the type of ``default`` (ints are accepted as floats), and ``v`` as that type."""
    if isinstance(default, bool):
        return isinstance(v, bool), v
    if isinstance(default, int):
        return isinstance(v, int) and not isinstance(v, bool), v
    if isinstance(default, float):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        return ok, float(v) if ok else v
    if isinstance(default, str):
        return isinstance(v, str), v
    return True, v


def typed_options(base: T, options: dict[str, Any], method: str) -> T:
    """``base`` (a frozen dataclass of defaults) with ``options`` on top, each checked against its
    default's type; unknown keys and wrong types are one clear line."""
    names = [f.name for f in fields(base)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"unknown {method} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    for k, v in options.items():
        ok, v = _checked(getattr(base, k), v)
        if not ok:
            raise ConfigError(f"{method} option '{k}' has the wrong type: {v!r}")
        base = replace(base, **{k: v})  # type: ignore[type-var]
    return base
