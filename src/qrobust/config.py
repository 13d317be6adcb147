"""Typed, validated configuration for training and sweeps.

Every config is a pydantic model with ``extra="forbid"``: an unknown key or a wrong type becomes one
:class:`~qrobust.errors.ConfigError` line naming the key, never a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .names import check_name


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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """Where text comes from and how it becomes token blocks."""

    corpus: str = "builtin"
    field: str | None = None  # text field for jsonl / HF datasets (default "text")
    max_chars: int | None = Field(default=4_000_000, gt=0)
    val_fraction: float = Field(default=0.05, gt=0.0, lt=1.0)
    seq_len: int = Field(default=128, ge=8)
    tokenizer: str = "bpe"  # "bpe", "byte", or a path to an HF tokenizer folder
    vocab_size: int = Field(default=2048, ge=258)
    seed: int = 0


class ModelConfig(Strict):
    arch: Literal["gpt_neox", "llama"] = "gpt_neox"
    preset: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(Strict):
    """AdamW with the paper's defaults."""

    lr: float = Field(default=3e-3, gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)


class ScheduleConfig(Strict):
    """LR schedule of the main run. ``wsd`` without ``decay_steps`` is warmup-then-constant."""

    kind: Literal["constant", "cosine", "wsd"] = "constant"
    warmup_steps: int = Field(default=100, ge=0)
    final_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    decay_steps: int = Field(default=0, ge=0)  # wsd: length of the final decay
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"


class BranchConfig(Strict):
    """A cooldown branch: start at a stable-phase checkpoint, decay over ``decay_steps``."""

    from_step: int = Field(ge=1)
    decay_steps: int = Field(ge=1)
    shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    final_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return check_name(v, "branch name")  # the run's folder is checkpoints/<name>

    @property
    def run_name(self) -> str:
        return self.name or f"decay{self.from_step}"


class TrainAverageConfig(Strict):
    """Averaged weights kept during training and saved beside the raw ones at every checkpoint.

    ``ema``: per-step exponential moving average e ← β·e + (1 − β)·θ (after every optimizer step).
    ``lawa``: uniform mean of the last ``window`` snapshots taken every ``every`` steps (default: at
    each checkpoint)."""

    kind: Literal["ema", "lawa"]
    beta: float = Field(default=0.999, gt=0, lt=1)
    window: int = Field(default=5, ge=1)
    every: int | None = Field(default=None, ge=1)
    name: str | None = None  # run-name suffix; default ema<β> / lawa<window>[e<every>]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return check_name(v, "averaged run name")  # the run's folder is checkpoints/<run>-<name>

    def suffix(self, checkpoint_every: int) -> str:
        """The averaged run of run R is called ``R-<suffix>``."""
        if self.name:
            return self.name
        if self.kind == "ema":
            return f"ema{self.beta:g}"
        every = self.every or checkpoint_every
        return f"lawa{self.window}" + (f"e{every}" if every != checkpoint_every else "")


class TrainConfig(Strict):
    name: str = "run"
    out: str = "runs/run"
    seed: int = 0
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    branches: list[BranchConfig] = Field(default_factory=list)
    averaging: list[TrainAverageConfig] = Field(default_factory=list)
    threads: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "trajectory name")  # a sweep stores it as trajectories/<name>.json

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.schedule.kind == "wsd" and self.schedule.decay_steps > self.steps - self.schedule.warmup_steps:
            raise ValueError("schedule.decay_steps must fit after warmup within steps")
        for b in self.branches:
            if b.from_step % self.checkpoint_every and b.from_step != self.steps:
                raise ValueError(
                    f"branch from_step {b.from_step} is not a checkpoint step (checkpoint_every={self.checkpoint_every})")
            if b.from_step > self.steps:
                raise ValueError(f"branch from_step {b.from_step} is beyond steps={self.steps}")
        names = [a.suffix(self.checkpoint_every) for a in self.averaging]
        if len(set(names)) != len(names):
            raise ValueError(f"averaging entries must have distinct names, got {names}; set 'name' on one")
        return self


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

    averager: Literal["lawa", "ema", "soup", "greedy-soup"]
    window: int = Field(default=5, ge=1)  # lawa: checkpoints per mean
    stride: int = Field(default=1, ge=1)  # lawa: every stride-th checkpoint
    beta: float = Field(default=0.9, ge=0, lt=1)  # ema: decay per checkpoint
    runs: list[str] | None = None  # lawa / ema: only these runs
    # soups: the ingredient sources (the last checkpoint of each of their runs); default: the swept trajectory
    sources: list[str | dict[str, Any]] | None = None


class SweepConfig(Strict):
    claim_ttl_s: float = Field(default=600.0, gt=0)  # a worker silent this long loses its checkpoint claim
    # a source spec (run folder, model folder, folders:GLOB, hf:ORG/NAME@REVS, preset:NAME, with ?every=...)
    # or {source: SPEC, step_pattern: REGEX, every: N, steps: [...], max: N, run: NAME}
    trajectory: str | dict[str, Any]
    out: str = "results"
    # a method name, or {name: gptq, <option>: value, ...} for method options (e.g. profile, damp)
    methods: list[str | dict[str, Any]] = Field(default_factory=lambda: ["rtn"])
    bits: list[int] = Field(default_factory=lambda: [3, 4])
    group_sizes: list[int] = Field(default_factory=lambda: [128])
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


M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, what: str) -> str:
    """Turn pydantic's multi-line report into one line naming the first offending key."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = f"unknown key '{loc}' in {what}; check the spelling against the documented keys"
    elif kind == "missing":
        msg = f"missing required key '{loc}' in {what}"
    else:
        got = first.get("input")
        got_s = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
        msg = f"invalid value for '{loc}' in {what}: {first['msg']}{got_s}"
    n = len(err.errors())
    if n > 1:
        msg += f" [+{n - 1} more problem(s)]"
    return msg


def parse_config(cls: type[M], data: Any, what: str = "config") -> M:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, what)) from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML silently keeps the last).

    Keys brought in by a ``<<`` merge may still be overridden: only keys written in the mapping itself count."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base loader names that error
                continue
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, what: str) -> Any:
    """YAML text from a user (config, sweep, experiment or preset file) -> data; a duplicate key or a syntax
    error is one ConfigError line naming ``what``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{what}: key '{e.key}' is given twice in one mapping (lines {e.first} and {e.second}); "
                          "keep one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = parse_yaml(p.read_text(), f"config file {p}")
    return data if data is not None else {}


def load_config(cls: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    data = load_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return parse_config(cls, data, what=f"config {path}")
