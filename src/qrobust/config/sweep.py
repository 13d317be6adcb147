"""Typed configuration of a sweep and its parts: eval and calibration sets, downstream tasks, geometry,
averagers, and the bit-width / group-size rules shared with the CLI and the grids."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Strict


MIN_BITS, MAX_BITS = 2, 8  # the integer grids qrobust quantizes to


def bits_problem(bits: object) -> str | None:
    """Why ``bits`` is not a bit-width qrobust can quantize to, or None: the one rule the CLI, the configs
    and the grids share."""
    if isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS:
        return None
    got = bits if isinstance(bits, int) else repr(bits)
    return f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {got}"


def group_size_problem(group_size: object) -> str | None:
    """Why ``group_size`` is not a group size (-1: one group per output channel), or None."""
    if isinstance(group_size, int) and (group_size == -1 or group_size > 0):
        return None
    got = group_size if isinstance(group_size, int) else repr(group_size)
    return f"group size must be -1 (per output channel) or a positive integer, got {got}"


class EvalConfig(Strict):
    corpus: str | None = None  # default: the trajectory's training corpus (validation split)
    field: str | None = None
    split: Literal["val", "train", "all"] = "val"
    n_blocks: int = Field(default=64, ge=1)
    seq_len: int | None = Field(default=None, ge=8)
    batch_size: int = Field(default=8, ge=1)


class CalibrationConfig(Strict):
    corpus: str | None = None
    field: str | None = None
    n_samples: int = Field(default=128, ge=1)
    seq_len: int | None = Field(default=None, ge=8)
    seed: int = 0


class TasksConfig(Strict):
    """Downstream accuracy with lm-evaluation-harness, FP and quantized (``sweep`` and ``eval --tasks``)."""

    names: list[str] = Field(default_factory=lambda: ["builtin-nextline"])
    num_fewshot: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)  # items per task (None: all)
    batch_size: int | Literal["auto"] = "auto"
    seed: int = 0
    backend: Literal["hf", "vllm"] = "hf"  # vllm: optional, when installed (serves a saved copy of the weights)

    def identity(self) -> dict[str, Any]:
        """What keys the stored accuracies: every setting, the backend only when it is not the default (so
        stores written before the backend existed keep their keys)."""
        d = self.model_dump()
        if d["backend"] == "hf":
            del d["backend"]
        return d


class GeometryConfig(Strict):
    """Loss-geometry measurements of one checkpoint (``qrobust sharpness``, and a sweep's ``geometry``).

    Curvature is of the mean token loss over the first ``n_blocks`` blocks of the eval split, w.r.t. the
    parameters matching ``params`` (globs, ``linear`` = the quantized linears' weights, default all)."""

    sharpness: bool = True  # top eigenvalue(s) of the Hessian
    top_k: int = Field(default=1, ge=1)
    method: Literal["lanczos", "power"] = "lanczos"
    iters: int = Field(default=20, ge=1)
    tol: float = Field(default=1e-3, gt=0)
    trace: Literal["hutch++", "hutchinson", "none"] = "hutch++"
    trace_matvecs: int = Field(default=30, ge=3)  # Hutch++ budget, or Hutchinson probes
    per_layer: bool = False  # also λmax of each quantized linear's weight alone
    per_layer_iters: int = Field(default=10, ge=1)
    weight_stats: bool = True
    k_sigma: float = Field(default=3.0, gt=0)
    params: list[str] | None = None
    n_blocks: int = Field(default=8, ge=1)
    seq_len: int | None = Field(default=None, ge=8)
    batch_size: int = Field(default=8, ge=1)
    corpus: str | None = None
    field: str | None = None
    split: Literal["val", "train", "all"] = "val"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "GeometryConfig":
        if self.method == "lanczos" and self.iters < self.top_k:
            raise ValueError(f"iters ({self.iters}) must be at least top_k ({self.top_k})")
        if self.method == "power" and self.top_k != 1:
            raise ValueError("power iteration finds one eigenvalue; use method: lanczos for top_k > 1")
        return self

    def eval_config(self) -> "EvalConfig":
        return EvalConfig(corpus=self.corpus, field=self.field, split=self.split, n_blocks=self.n_blocks,
                          seq_len=self.seq_len, batch_size=self.batch_size)


class AverageConfig(Strict):
    """One offline averager: the options of ``qrobust average``, or an entry of a sweep's ``average`` list
    (averaged checkpoints made before quantizing). Averaging during training: :class:`TrainAverageConfig`."""

    averager: str  # a registered averager: lawa, ema, soup, greedy-soup (qrobust.averaging.AVERAGERS)
    window: int = Field(default=5, ge=1)  # lawa: checkpoints per mean
    stride: int = Field(default=1, ge=1)  # lawa: every stride-th checkpoint
    beta: float = Field(default=0.9, ge=0, lt=1)  # ema: decay per checkpoint
    runs: list[str] | None = None  # lawa / ema: only these runs
    # soups: the ingredient sources (the last checkpoint of each of their runs); default: the swept trajectory
    sources: list[str | dict[str, Any]] | None = None


class SweepConfig(Strict):
    omit_if_default = ("formats",)  # added with number formats: older sweep dumps stay byte-identical
    claim_ttl_s: float = Field(default=600.0, gt=0)  # a worker silent this long loses its checkpoint claim
    # a source spec (run folder, model folder, folders:GLOB, hf:ORG/NAME@REVS, preset:NAME, with ?every=...)
    # or {source: SPEC, step_pattern: REGEX, every: N, steps: [...], max: N, run: NAME}
    trajectory: str | dict[str, Any]
    out: str = "results"
    # a method name, or {name: gptq, <option>: value, ...} for method options (e.g. profile, damp)
    methods: list[str | dict[str, Any]] = Field(default_factory=lambda: ["rtn"])
    bits: list[int] = Field(default_factory=lambda: [3, 4])
    group_sizes: list[int] = Field(default_factory=lambda: [128])
    # named number formats (nvfp4, mxfp4, fp8-e4m3-channel, int4-g128, w8a8-int8, WEIGHT+a-ACT+kv-KV …):
    # when given, the variants are methods × formats and bits / group_sizes are not used
    formats: list[str] = Field(default_factory=list)
    sym: bool = True
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # averaged checkpoints made before quantizing (LAWA / EMA runs beside the originals, soups)
    average: list[AverageConfig] = Field(default_factory=list)
    # loss geometry per checkpoint (λmax, trace, weight statistics), stored beside the records
    geometry: GeometryConfig | None = None
    # downstream accuracy per checkpoint (FP once) and per variant, stored in tasks/
    tasks: TasksConfig | None = None
    eval: EvalConfig = Field(default_factory=EvalConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    threads: int | None = Field(default=None, ge=1)
    # where models run (auto: CUDA when present) and their dtype; quantizer math stays fp32. A dtype other
    # than float32 is part of every record key (it changes the numbers); the device is recorded, not keyed.
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # layer streaming: one decoder block in memory at a time, FP and every variant in one pass per
    # checkpoint (models beyond RAM / VRAM); same numbers, so not part of the record keys. ``states``:
    # where the carried hidden states live; ``states_dir``: parent folder of the disk tier's files.
    stream: bool = False
    states: Literal["auto", "device", "cpu", "disk"] = "auto"
    states_dir: str | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        d = v.strip().lower()
        if not (d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got '{v}'")
        return d

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for m in v:
            if isinstance(m, dict) and not isinstance(m.get("name"), str):
                raise ValueError("a method given as a mapping needs a 'name' (e.g. {name: gptq, profile: reference})")
        return v

    def method_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, options) for every method entry."""
        out = []
        for m in self.methods:
            if isinstance(m, str):
                out.append((m, {}))
            else:
                out.append((m["name"], {k: v for k, v in m.items() if k != "name"}))
        return out

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        for b in v:
            if bits_problem(b):
                raise ValueError(bits_problem(b))
        return v

    @field_validator("group_sizes")
    @classmethod
    def _groups(cls, v: list[int]) -> list[int]:
        for g in v:
            if group_size_problem(g):
                raise ValueError(group_size_problem(g))
        return v
