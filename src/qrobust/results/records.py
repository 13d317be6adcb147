"""Typed records: what the store holds, as objects with named fields instead of dicts read by dotted strings.

One class per record kind (the store's folder): ``VariantRecord`` (records/: one quantization variant of one
checkpoint on one eval set), ``FPRecord`` (fp/), ``GeometryRecord`` (geometry/), ``TaskRecord`` (tasks/) and
``TaskFPRecord`` (tasks_fp/). Each is parsed from the JSON the store wrote (:func:`parse`) and keeps that JSON
unchanged (``to_dict()``), so exporting, re-writing or hashing a record never loses a field a newer or older
qrobust wrote. Writers build them with ``Kind.new(key, ...)``, which lays out exactly the JSON the store
writes (and parses it back, so a record that would not read is never written).

The layout is versioned (:mod:`.schema`): a dict of an older schema is lifted by its registered migration,
one of a newer schema is refused with the reason. A dict that does not parse raises :class:`RecordError`;
the store then skips the file with a warning and a sweep recomputes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping

from ..trajectory import Checkpoint
from .parts import (BlockNLL, EvalSetInfo, Geometry, Metrics, Outcome, RunInfo, Subject, VariantInfo, WeightError,
                    as_floats, as_int, as_number, as_object, as_str, checkpoint_of, eval_set_dict, scores, variant_dict)
from .schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, RecordError, lift, register_migration

if TYPE_CHECKING:
    from ..data.evalset import EvalSet
    from ..evaluate import LossResult
    from ..quant import QuantSpec

__all__ = ["Record", "VariantRecord", "FPRecord", "GeometryRecord", "TaskRecord", "TaskFPRecord", "KINDS", "parse",
           "COLUMNS", "RecordError", "SCHEMA", "SCHEMA_VERSION", "MIGRATIONS", "register_migration", "Subject",
           "Outcome", "RunInfo", "checkpoint_of"]

# the flat columns of a variant record (CSV, parquet, the results table), in order: see VariantRecord.row
COLUMNS = [
    "trajectory", "checkpoint.name", "checkpoint.run", "checkpoint.step", "checkpoint.tokens", "checkpoint.lr",
    "checkpoint.phase", "variant.method", "variant.bits", "variant.group_size", "variant.sym",
    "metrics.loss_fp", "metrics.loss_q", "metrics.dq_rel", "metrics.dq_abs", "metrics.ppl_fp", "metrics.ppl_q",
    "metrics.dq_ci.low", "metrics.dq_ci.high", "metrics.dq_ci.se",
    "weight_error.rel_err_mean", "eval_set.id", "eval_set.n_tokens", "timings.quantize_s", "timings.eval_s", "key",
]


@dataclass(frozen=True)
class Record:
    """What every stored record has: its key, the JSON it was read from, the checkpoint it is about and the
    trajectory it was swept in ('' for the FP records a checkpoint's variants share)."""

    KIND: ClassVar[str] = ""
    key: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    checkpoint: Checkpoint
    trajectory: str = ""
    # when and where the store wrote it, with which package versions: provenance, not part of what it says
    created: str | None = field(default=None, compare=False)
    host: str | None = field(default=None, compare=False)
    versions: Mapping[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (every field, including those this class does not name)."""
        return dict(self.raw)

    def has(self, part: str) -> bool:
        """Whether the stored JSON has this top-level part (a sparse, hand-made record may not)."""
        return part in self.raw

    def order(self) -> tuple:
        """Sort key: trajectory, run, step."""
        return (self.trajectory, self.checkpoint.run, self.checkpoint.step)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Record":
        raise NotImplementedError

    @classmethod
    def built(cls, key: str, d: dict[str, Any]) -> "Record":
        """A new record of this kind from the JSON fields a writer laid out (checked by parsing them)."""
        return cls.parse({**d, "schema": SCHEMA, "key": key})

    @staticmethod
    def base(d: dict[str, Any]) -> dict[str, Any]:
        return {"key": as_str(d.get("key"), "key") or "", "raw": d, "checkpoint": checkpoint_of(d.get("checkpoint")),
                "trajectory": as_str(d.get("trajectory"), "trajectory") or "",
                "created": as_str(d.get("created"), "created"), "host": as_str(d.get("host"), "host"),
                "versions": as_object(d.get("versions"), "versions") if d.get("versions") is not None else None}


@dataclass(frozen=True)
class VariantRecord(Record):
    """One quantization variant of one checkpoint on one eval set: the sweep's result."""

    KIND: ClassVar[str] = "records"
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
        return cls(**cls.base(d), variant=VariantInfo.parse(d.get("variant")), metrics=Metrics.parse(d.get("metrics")),
                   eval_set=EvalSetInfo.parse(d.get("eval_set")), weight_error=WeightError.parse(d.get("weight_error")),
                   blocks=BlockNLL.parse(d.get("blocks")),
                   calibration=as_object(d.get("calibration"), "calibration") if d.get("calibration") is not None
                   else None, timings=as_object(d.get("timings"), "timings"), streamed=bool(d.get("streamed")))

    @classmethod
    def new(cls, key: str, subject: Subject, spec: "QuantSpec", es: "EvalSet", outcome: Outcome,
            run: RunInfo) -> "VariantRecord":
        """The record of ``spec`` quantized and evaluated on ``es``, as the store writes it."""
        return cls.built(key, {**subject.fields(), "variant": variant_dict(spec), "calibration": outcome.calibration,
                               "eval_set": eval_set_dict(es), "metrics": outcome.metrics,
                               "weight_error": outcome.weight_error, "layers": outcome.layers,
                               "blocks": outcome.blocks, **run.fields()})

    def order(self) -> tuple:
        """Sort key: trajectory, run, step, then method, bits, group size."""
        v = self.variant
        return super().order() + (v.method or "", v.bits or 0, v.group_size or 0)

    def row(self) -> dict[str, Any]:
        """The flat columns (``COLUMNS``) for CSV, parquet and the results table; a part the stored record
        lacks (a sparse, hand-made record) gives empty cells."""
        ck = self.checkpoint if self.has("checkpoint") else None
        v = self.variant if self.has("variant") else None
        m, ci = self.metrics, self.metrics.dq_ci
        values = [self.trajectory if self.has("trajectory") else None,
                  *((ck.name, ck.run, ck.step, ck.tokens, ck.lr, ck.phase) if ck else (None,) * 6),
                  *((v.method, v.bits, v.group_size, v.sym) if v else (None,) * 4),
                  m.loss_fp, m.loss_q, m.dq_rel, m.dq_abs, m.ppl_fp, m.ppl_q,
                  *((ci.low, ci.high, ci.se) if ci else (None,) * 3),
                  self.weight_error.rel_err_mean, self.eval_set.id, self.eval_set.n_tokens,
                  self.timings.get("quantize_s"), self.timings.get("eval_s"), self.key]
        return dict(zip(COLUMNS, values))


@dataclass(frozen=True)
class FPRecord(Record):
    """The FP loss of one checkpoint on one eval set (shared by all its variants)."""

    KIND: ClassVar[str] = "fp"
    eval_set: EvalSetInfo = field(default_factory=EvalSetInfo)
    loss: float | None = None
    n_tokens: int | None = None
    block_nll: list[float] = field(default_factory=list)
    seconds: float | None = None

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "FPRecord":
        return cls(**cls.base(d), eval_set=EvalSetInfo.parse(d.get("eval_set")), loss=as_number(d.get("loss"), "loss"),
                   n_tokens=as_int(d.get("n_tokens"), "n_tokens"), block_nll=as_floats(d.get("block_nll"), "block_nll"),
                   seconds=as_number(d.get("seconds"), "seconds"))

    @classmethod
    def new(cls, key: str, checkpoint: Checkpoint, es: "EvalSet", r: "LossResult") -> "FPRecord":
        """The FP loss ``r`` of ``checkpoint`` on ``es``, as the store writes it."""
        return cls.built(key, {"checkpoint": checkpoint.to_dict(), "eval_set": eval_set_dict(es), "loss": r.loss,
                               "n_tokens": r.n_tokens, "block_nll": r.block_sums, "seconds": r.seconds})


@dataclass(frozen=True)
class GeometryRecord(Record):
    """Loss geometry (λmax, trace, weight statistics) of one checkpoint on its geometry block set."""

    KIND: ClassVar[str] = "geometry"
    geometry: Geometry = field(default_factory=Geometry)
    eval_set: EvalSetInfo = field(default_factory=EvalSetInfo)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "GeometryRecord":
        return cls(**cls.base(d), geometry=Geometry.parse(d.get("geometry")),
                   eval_set=EvalSetInfo.parse(d.get("eval_set")))

    @classmethod
    def new(cls, key: str, subject: Subject, es: "EvalSet", geometry: Mapping[str, Any],
            seconds: float) -> "GeometryRecord":
        return cls.built(key, {**subject.fields(), "eval_set": eval_set_dict(es), "geometry": geometry,
                               "seconds": seconds})


@dataclass(frozen=True)
class TaskRecord(Record):
    """Downstream-task accuracy of one variant beside the FP model's: per task ``fp``, ``q`` and ``drop``."""

    KIND: ClassVar[str] = "tasks"
    variant: VariantInfo = field(default_factory=VariantInfo)
    fp: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    q: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drop: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "TaskRecord":
        return cls(**cls.base(d), variant=VariantInfo.parse(d.get("variant")), fp=scores(d.get("fp"), "fp"),
                   q=scores(d.get("q"), "q"), drop=scores(d.get("drop"), "drop"),
                   tasks_config=as_object(d.get("tasks_config"), "tasks_config"))

    @classmethod
    def new(cls, key: str, subject: Subject, spec: "QuantSpec", tasks_config: Mapping[str, Any],
            accuracy: tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]) -> "TaskRecord":
        """``accuracy`` is (fp, q, drop): per task, the FP model's, the quantized model's, and the drop."""
        fp, q, drop = accuracy
        return cls.built(key, {**subject.fields(), "variant": variant_dict(spec), "tasks_config": tasks_config,
                               "fp": fp, "q": q, "drop": drop})


@dataclass(frozen=True)
class TaskFPRecord(Record):
    """Downstream-task accuracy of the FP model of one checkpoint (shared by its variants)."""

    KIND: ClassVar[str] = "tasks_fp"
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "TaskFPRecord":
        return cls(**cls.base(d), tasks=scores(d.get("tasks"), "tasks"))

    @classmethod
    def new(cls, key: str, checkpoint: Checkpoint, tasks: Mapping[str, Any]) -> "TaskFPRecord":
        return cls.built(key, {"checkpoint": checkpoint.to_dict(), "tasks": tasks})


KINDS: dict[str, type[Record]] = {c.KIND: c for c in (VariantRecord, FPRecord, GeometryRecord, TaskRecord, TaskFPRecord)}


def parse(kind: str, d: Any, key: str | None = None) -> Record:
    """The typed record of ``kind`` in the parsed JSON ``d`` (stored under ``key``); RecordError says why not."""
    if not isinstance(d, dict):
        raise RecordError("not a JSON object")
    d = lift(d)
    if key is not None and d.get("key") != key:
        raise RecordError(f"its key {d.get('key')!r} differs from its file name")
    cls = KINDS.get(kind)
    if cls is None:
        raise RecordError(f"unknown record kind '{kind}'; known: {', '.join(sorted(KINDS))}")
    try:
        return cls.parse(d)
    except TypeError as e:  # a field of the wrong shape for Checkpoint(...) and friends
        raise RecordError(str(e)) from None


def variant_records(records: Iterable[VariantRecord | Mapping[str, Any]]) -> list[VariantRecord]:
    """Typed variant records; a plain dict (a hand-made or exported record) is parsed once, here."""
    return [r if isinstance(r, Record) else VariantRecord.parse(dict(r)) for r in records]


def geometry_records(records: Iterable[GeometryRecord | Mapping[str, Any]]) -> list[GeometryRecord]:
    return [r if isinstance(r, Record) else GeometryRecord.parse(dict(r)) for r in records]


def task_records(records: Iterable[TaskRecord | Mapping[str, Any]]) -> list[TaskRecord]:
    return [r if isinstance(r, Record) else TaskRecord.parse(dict(r)) for r in records]
