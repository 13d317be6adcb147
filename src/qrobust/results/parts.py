"""The parts records are made of (metrics, variant, eval set, weight error, per-block NLLs, geometry, the
checkpoint), each parsed from its JSON object with the field named in the error when it has the wrong type.

Parsing never copies or reshapes what it reads: a record keeps the JSON it came from, and the values the
typed fields hold are the very numbers stored (so a record re-written from them is byte-identical).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping

from ..trajectory import Checkpoint
from .schema import RecordError

if TYPE_CHECKING:  # names only: reading a store must not import torch
    from ..data.evalset import EvalSet
    from ..quant import QuantSpec


# -- field parsing -------------------------------------------------------------------------------------------
def as_object(d: Any, what: str) -> dict[str, Any]:
    """A JSON object field (absent: empty)."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise RecordError(f"'{what}' is not an object")
    return d


def as_number(v: Any, what: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(f"'{what}' is not a number")
    return v


def as_int(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"'{what}' is not an integer")
    return v


def as_str(v: Any, what: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise RecordError(f"'{what}' is not a string")
    return v


def as_floats(v: Any, what: str) -> list[float]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise RecordError(f"'{what}' is not a list of numbers")
    return v


def checkpoint_of(d: Any, what: str = "checkpoint") -> Checkpoint:
    """The record's checkpoint as the Trajectory's own type (unknown extra fields are ignored)."""
    d = as_object(d, what)
    names = {f.name for f in fields(Checkpoint)}
    kw = {k: v for k, v in d.items() if k in names}
    step = as_int(kw.get("step"), f"{what}.step")
    return Checkpoint(**{"name": as_str(kw.get("name"), f"{what}.name") or "", "path": str(kw.get("path") or ""),
                         **{k: v for k, v in kw.items() if k not in ("name", "path", "step")},
                         "step": step if step is not None else 0})


def variant_dict(spec: QuantSpec) -> dict[str, Any]:
    """How a record stores its variant: the QuantSpec's fields and its label."""
    return {**spec.to_dict(), "label": spec.label}


def eval_set_dict(es: EvalSet) -> dict[str, Any]:
    """How a record stores the blocks a loss was measured on: their id (part of every key) and description."""
    return {"id": es.id, **es.info}


# -- parts ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """Whose numbers a record holds: the trajectory, the checkpoint as listed, and what identifies its
    numbers (weights fingerprint, dtype) — the ``checkpoint_id`` part of every key."""

    trajectory: str
    checkpoint: Checkpoint
    identity: Mapping[str, Any]

    def fields(self) -> dict[str, Any]:
        return {"trajectory": self.trajectory, "checkpoint": self.checkpoint.to_dict(),
                "checkpoint_id": self.identity}


@dataclass(frozen=True)
class Outcome:
    """What quantizing and evaluating one variant gave, as a record stores it: ``metrics`` (ΔQ L and its
    interval), ``blocks`` (per-block NLLs), the quantizer's weight errors and layers, the calibration used."""

    metrics: Mapping[str, Any]
    blocks: Mapping[str, Any]
    weight_error: Mapping[str, Any]
    layers: Mapping[str, Any]
    calibration: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RunInfo:
    """How a variant was run: timings, device and dtype, and the layer-streaming details when streamed."""

    timings: Mapping[str, float]
    device: str
    dtype: str
    streamed: Mapping[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        extra = {} if self.streamed is None else {"streamed": self.streamed}
        return {"timings": self.timings, "device": self.device, "dtype": self.dtype, **extra}


@dataclass(frozen=True)
class Interval:
    """A paired-bootstrap interval of ΔQ L (see :func:`qrobust.stats.dq_interval`)."""

    dq: float | None = None
    low: float | None = None
    high: float | None = None
    se: float | None = None
    confidence: float | None = None
    n_blocks: int | None = None
    n_boot: int | None = None

    @classmethod
    def parse(cls, d: Any, what: str = "metrics.dq_ci") -> "Interval | None":
        if d is None:
            return None
        d = as_object(d, what)
        return cls(**{f.name: as_number(d.get(f.name), f"{what}.{f.name}") for f in fields(cls)})


@dataclass(frozen=True)
class Metrics:
    """FP vs quantized loss of one variant: ΔQ L = loss_q / loss_fp - 1 (``dq_rel``)."""

    loss_fp: float | None = None
    loss_q: float | None = None
    dq_rel: float | None = None
    dq_abs: float | None = None
    ppl_fp: float | None = None
    ppl_q: float | None = None
    dq_ci: Interval | None = None

    @classmethod
    def parse(cls, d: Any) -> "Metrics":
        d = as_object(d, "metrics")
        kw: dict[str, Any] = {f.name: as_number(d.get(f.name), f"metrics.{f.name}") for f in fields(cls)
                              if f.name != "dq_ci"}
        return cls(**kw, dq_ci=Interval.parse(d.get("dq_ci")))


@dataclass(frozen=True)
class VariantInfo:
    """The variant as recorded (a plain record of the QuantSpec; the method need not be registered to read it)."""

    method: str | None = None
    bits: int | None = None
    group_size: int | None = None
    sym: bool = True
    label: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    format: str | None = None  # a named number format (float formats); None: the integer (bits, group_size, sym)
    act: str | None = None  # activation format, if any
    kv: str | None = None  # KV-cache format, if any

    @classmethod
    def parse(cls, d: Any) -> "VariantInfo":
        d = as_object(d, "variant")
        return cls(method=as_str(d.get("method"), "variant.method"), bits=as_int(d.get("bits"), "variant.bits"),
                   group_size=as_int(d.get("group_size"), "variant.group_size"), sym=d.get("sym") is not False,
                   label=as_str(d.get("label"), "variant.label"), options=as_object(d.get("options"), "variant.options"),
                   include=tuple(d.get("include") or ()), exclude=tuple(d.get("exclude") or ()),
                   format=as_str(d.get("format"), "variant.format"), act=as_str(d.get("act"), "variant.act"),
                   kv=as_str(d.get("kv"), "variant.kv"))


@dataclass(frozen=True)
class EvalSetInfo:
    """Which token blocks a loss was measured on (``id`` is part of every record key)."""

    id: str | None = None
    n_tokens: int | None = None
    n_blocks: int | None = None
    seq_len: int | None = None
    corpus: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, d: Any) -> "EvalSetInfo":
        d = as_object(d, "eval_set")
        return cls(id=as_str(d.get("id"), "eval_set.id"), n_tokens=as_int(d.get("n_tokens"), "eval_set.n_tokens"),
                   n_blocks=as_int(d.get("n_blocks"), "eval_set.n_blocks"),
                   seq_len=as_int(d.get("seq_len"), "eval_set.seq_len"),
                   corpus=as_str(d.get("corpus"), "eval_set.corpus"), split=as_str(d.get("split"), "eval_set.split"))


@dataclass(frozen=True)
class WeightError:
    """Relative weight error of the quantized linears (mean and max over layers) and their MSE."""

    n_layers: int | None = None
    rel_err_mean: float | None = None
    rel_err_max: float | None = None
    weight_mse: float | None = None

    @classmethod
    def parse(cls, d: Any) -> "WeightError":
        d = as_object(d, "weight_error")
        return cls(n_layers=as_int(d.get("n_layers"), "weight_error.n_layers"),
                   **{k: as_number(d.get(k), f"weight_error.{k}") for k in ("rel_err_mean", "rel_err_max", "weight_mse")})


@dataclass(frozen=True)
class BlockNLL:
    """Summed NLL per evaluation block, FP and quantized (the paired bootstrap resamples these)."""

    nll_fp: list[float] = field(default_factory=list)
    nll_q: list[float] = field(default_factory=list)
    tokens_per_block: int | None = None

    @classmethod
    def parse(cls, d: Any) -> "BlockNLL":
        d = as_object(d, "blocks")
        return cls(nll_fp=as_floats(d.get("nll_fp"), "blocks.nll_fp"), nll_q=as_floats(d.get("nll_q"), "blocks.nll_q"),
                   tokens_per_block=as_int(d.get("tokens_per_block"), "blocks.tokens_per_block"))


@dataclass(frozen=True)
class Geometry:
    """Loss geometry of one checkpoint: top Hessian eigenvalue, trace estimate, gradient norm, weight statistics."""

    lambda_max: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    n_params: int | None = None
    trace: Mapping[str, Any] = field(default_factory=dict)
    eigen: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    layers: Mapping[str, Any] = field(default_factory=dict)  # per quantized linear: its weight's top eigenvalue

    @classmethod
    def parse(cls, d: Any) -> "Geometry":
        d = as_object(d, "geometry")
        return cls(lambda_max=as_number(d.get("lambda_max"), "geometry.lambda_max"),
                   loss=as_number(d.get("loss"), "geometry.loss"),
                   grad_norm=as_number(d.get("grad_norm"), "geometry.grad_norm"),
                   n_params=as_int(d.get("n_params"), "geometry.n_params"),
                   **{k: as_object(d.get(k), f"geometry.{k}") for k in ("trace", "eigen", "weights", "config", "layers")})


def scores(d: Any, what: str) -> dict[str, dict[str, Any]]:
    """Per-task scores ({task: {metric: value}})."""
    d = as_object(d, what)
    return {task: as_object(v, f"{what}.{task}") for task, v in d.items()}
