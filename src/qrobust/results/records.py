"""Typed records: what the store holds, as objects with named fields instead of dicts read by dotted strings.

One class per record kind (the store's folder): ``VariantRecord`` (records/: one quantization variant of one
checkpoint on one eval set), ``FPRecord`` (fp/), ``GeometryRecord`` (geometry/), ``TaskRecord`` (tasks/) and
``TaskFPRecord`` (tasks_fp/). Each is parsed from the JSON the store wrote (:func:`parse`) and keeps that JSON
unchanged (``to_dict()``), so exporting, re-writing or hashing a record never loses a field a newer or older
qrobust wrote.

The JSON layout is versioned by its ``schema`` field. ``SCHEMA`` is what this code writes; ``MIGRATIONS`` maps
every older schema it still reads to a function that lifts such a dict to today's layout (version 1 is today's:
the layout did not change when records became typed, so record keys and files stay byte-identical).
A dict that does not parse raises :class:`RecordError` with the reason; the store then skips the file with a
warning and a sweep recomputes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping

from ..errors import QrobustError
from ..trajectory import Checkpoint

SCHEMA = "qrobust.record/1"
SCHEMA_VERSION = 1
MIGRATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {SCHEMA: lambda d: d}


class RecordError(QrobustError, ValueError):
    """A stored dict is not a record of the kind asked for (the message says why)."""


# -- field parsing -------------------------------------------------------------------------------------------
def _obj(d: Any, what: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise RecordError(f"'{what}' is not an object")
    return d


def _num(v: Any, what: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(f"'{what}' is not a number")
    return v


def _int(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"'{what}' is not an integer")
    return v


def _str(v: Any, what: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise RecordError(f"'{what}' is not a string")
    return v


def _floats(v: Any, what: str) -> list[float]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise RecordError(f"'{what}' is not a list of numbers")
    return v


def checkpoint_of(d: Any, what: str = "checkpoint") -> Checkpoint:
    """The record's checkpoint as the Trajectory's own type (unknown extra fields are ignored)."""
    d = _obj(d, what)
    names = {f.name for f in fields(Checkpoint)}
    kw = {k: v for k, v in d.items() if k in names}
    step = _int(kw.get("step"), f"{what}.step")
    return Checkpoint(**{"name": _str(kw.get("name"), f"{what}.name") or "", "path": str(kw.get("path") or ""),
                         **{k: v for k, v in kw.items() if k not in ("name", "path", "step")},
                         "step": step if step is not None else 0})


# -- parts ---------------------------------------------------------------------------------------------------
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
        d = _obj(d, what)
        return cls(**{f.name: _num(d.get(f.name), f"{what}.{f.name}") for f in fields(cls)})


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
        d = _obj(d, "metrics")
        kw: dict[str, Any] = {f.name: _num(d.get(f.name), f"metrics.{f.name}") for f in fields(cls)
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

    @classmethod
    def parse(cls, d: Any) -> "VariantInfo":
        d = _obj(d, "variant")
        return cls(method=_str(d.get("method"), "variant.method"), bits=_int(d.get("bits"), "variant.bits"),
                   group_size=_int(d.get("group_size"), "variant.group_size"), sym=d.get("sym") is not False,
                   label=_str(d.get("label"), "variant.label"), options=_obj(d.get("options"), "variant.options"),
                   include=tuple(d.get("include") or ()), exclude=tuple(d.get("exclude") or ()))


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
        d = _obj(d, "eval_set")
        return cls(id=_str(d.get("id"), "eval_set.id"), n_tokens=_int(d.get("n_tokens"), "eval_set.n_tokens"),
                   n_blocks=_int(d.get("n_blocks"), "eval_set.n_blocks"),
                   seq_len=_int(d.get("seq_len"), "eval_set.seq_len"), corpus=_str(d.get("corpus"), "eval_set.corpus"),
                   split=_str(d.get("split"), "eval_set.split"))


@dataclass(frozen=True)
class WeightError:
    """Relative weight error of the quantized linears (mean and max over layers) and their MSE."""

    n_layers: int | None = None
    rel_err_mean: float | None = None
    rel_err_max: float | None = None
    weight_mse: float | None = None

    @classmethod
    def parse(cls, d: Any) -> "WeightError":
        d = _obj(d, "weight_error")
        return cls(n_layers=_int(d.get("n_layers"), "weight_error.n_layers"),
                   **{k: _num(d.get(k), f"weight_error.{k}") for k in ("rel_err_mean", "rel_err_max", "weight_mse")})


@dataclass(frozen=True)
class BlockNLL:
    """Summed NLL per evaluation block, FP and quantized (the paired bootstrap resamples these)."""

    nll_fp: list[float] = field(default_factory=list)
    nll_q: list[float] = field(default_factory=list)
    tokens_per_block: int | None = None

    @classmethod
    def parse(cls, d: Any) -> "BlockNLL":
        d = _obj(d, "blocks")
        return cls(nll_fp=_floats(d.get("nll_fp"), "blocks.nll_fp"), nll_q=_floats(d.get("nll_q"), "blocks.nll_q"),
                   tokens_per_block=_int(d.get("tokens_per_block"), "blocks.tokens_per_block"))


# -- records -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """What every stored record has: its key, the JSON it was read from, and the checkpoint it is about."""

    KIND: ClassVar[str] = ""
    key: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    checkpoint: Checkpoint
    created: str | None = None  # when and where the store wrote it, with which package versions (provenance)
    host: str | None = None
    versions: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (every field, including those this class does not name)."""
        return dict(self.raw)

    # transitional read access for callers not yet typed; removed when every reader uses fields
    def __getitem__(self, name: str) -> Any:
        return self.raw[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.raw.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.raw

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Record":
        raise NotImplementedError

    @staticmethod
    def _base(d: dict[str, Any]) -> dict[str, Any]:
        return {"key": _str(d.get("key"), "key") or "", "raw": d, "checkpoint": checkpoint_of(d.get("checkpoint")),
                "created": _str(d.get("created"), "created"), "host": _str(d.get("host"), "host"),
                "versions": _obj(d.get("versions"), "versions") if d.get("versions") is not None else None}


@dataclass(frozen=True)
class VariantRecord(Record):
    """One quantization variant of one checkpoint on one eval set: the sweep's result."""

    KIND: ClassVar[str] = "records"
    trajectory: str = ""
    variant: VariantInfo = field(default_factory=VariantInfo)
    metrics: Metrics = field(default_factory=Metrics)
    eval_set: EvalSetInfo = field(default_factory=EvalSetInfo)
    weight_error: WeightError = field(default_factory=WeightError)
    blocks: BlockNLL = field(default_factory=BlockNLL)
    calibration: Mapping[str, Any] | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    streamed: bool = False

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "VariantRecord":
        return cls(**cls._base(d), trajectory=_str(d.get("trajectory"), "trajectory") or "",
                   variant=VariantInfo.parse(d.get("variant")), metrics=Metrics.parse(d.get("metrics")),
                   eval_set=EvalSetInfo.parse(d.get("eval_set")), weight_error=WeightError.parse(d.get("weight_error")),
                   blocks=BlockNLL.parse(d.get("blocks")),
                   calibration=_obj(d.get("calibration"), "calibration") if d.get("calibration") is not None else None,
                   timings=_obj(d.get("timings"), "timings"), streamed=bool(d.get("streamed")))


@dataclass(frozen=True)
class FPRecord(Record):
    """The FP loss of one checkpoint on one eval set (shared by all its variants)."""

    KIND: ClassVar[str] = "fp"
    eval_set: EvalSetInfo = field(default_factory=EvalSetInfo)
    loss: float | None = None
    n_tokens: int | None = None
    block_nll: list[float] = field(default_factory=list)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "FPRecord":
        return cls(**cls._base(d), eval_set=EvalSetInfo.parse(d.get("eval_set")), loss=_num(d.get("loss"), "loss"),
                   n_tokens=_int(d.get("n_tokens"), "n_tokens"), block_nll=_floats(d.get("block_nll"), "block_nll"))


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
        d = _obj(d, "geometry")
        return cls(lambda_max=_num(d.get("lambda_max"), "geometry.lambda_max"), loss=_num(d.get("loss"), "geometry.loss"),
                   grad_norm=_num(d.get("grad_norm"), "geometry.grad_norm"),
                   n_params=_int(d.get("n_params"), "geometry.n_params"),
                   **{k: _obj(d.get(k), f"geometry.{k}") for k in ("trace", "eigen", "weights", "config", "layers")})


@dataclass(frozen=True)
class GeometryRecord(Record):
    KIND: ClassVar[str] = "geometry"
    trajectory: str = ""
    geometry: Geometry = field(default_factory=Geometry)
    eval_set: EvalSetInfo = field(default_factory=EvalSetInfo)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "GeometryRecord":
        return cls(**cls._base(d), trajectory=_str(d.get("trajectory"), "trajectory") or "",
                   geometry=Geometry.parse(d.get("geometry")), eval_set=EvalSetInfo.parse(d.get("eval_set")))


def _scores(d: Any, what: str) -> dict[str, dict[str, Any]]:
    d = _obj(d, what)
    return {task: _obj(v, f"{what}.{task}") for task, v in d.items()}


@dataclass(frozen=True)
class TaskRecord(Record):
    """Downstream-task accuracy of one variant beside the FP model's: per task ``fp``, ``q`` and ``drop``."""

    KIND: ClassVar[str] = "tasks"
    trajectory: str = ""
    variant: VariantInfo = field(default_factory=VariantInfo)
    fp: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    q: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drop: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "TaskRecord":
        return cls(**cls._base(d), trajectory=_str(d.get("trajectory"), "trajectory") or "",
                   variant=VariantInfo.parse(d.get("variant")), fp=_scores(d.get("fp"), "fp"), q=_scores(d.get("q"), "q"),
                   drop=_scores(d.get("drop"), "drop"), tasks_config=_obj(d.get("tasks_config"), "tasks_config"))


@dataclass(frozen=True)
class TaskFPRecord(Record):
    """Downstream-task accuracy of the FP model of one checkpoint (shared by its variants)."""

    KIND: ClassVar[str] = "tasks_fp"
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "TaskFPRecord":
        return cls(**cls._base(d), tasks=_scores(d.get("tasks"), "tasks"))


KINDS: dict[str, type[Record]] = {c.KIND: c for c in (VariantRecord, FPRecord, GeometryRecord, TaskRecord, TaskFPRecord)}


def parse(kind: str, d: Any, key: str | None = None) -> Record:
    """The typed record of ``kind`` in the parsed JSON ``d`` (stored under ``key``); RecordError says why not."""
    if not isinstance(d, dict):
        raise RecordError("not a JSON object")
    lift = MIGRATIONS.get(d.get("schema"))  # type: ignore[arg-type]
    if lift is None:
        raise RecordError(f"has no '{SCHEMA}' schema")
    if key is not None and d.get("key") != key:
        raise RecordError(f"its key {d.get('key')!r} differs from its file name")
    cls = KINDS.get(kind)
    if cls is None:
        raise RecordError(f"unknown record kind '{kind}'; known: {', '.join(sorted(KINDS))}")
    try:
        return cls.parse(lift(d))
    except TypeError as e:  # a field of the wrong shape for Checkpoint(...) and friends
        raise RecordError(str(e)) from None
