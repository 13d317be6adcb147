"""A reproduction experiment: named training runs (variations of one base config) and the sweep applied
to each, read from YAML, scaled, and resolved into the train and sweep configs the rest of qrobust runs.

Runs are stored by label and config hash (``runs/<label>-<hash>``), so two experiments that name the same
run with the same settings (F2 and F4 share their cooldown run; F3 and weight decay their 3e-3 run) train
it once, and a changed setting never resumes into an old folder.
"""
from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ...config import Strict, SweepConfig, TrainConfig, load_yaml, parse_config, parse_yaml
from ...errors import ConfigError
from ...names import check_name
from . import verdicts

# step counts that --scale multiplies: (path in a train config, ...). Branch entries are handled apart.
SCALED = [("steps",), ("checkpoint_every",), ("schedule", "warmup_steps"), ("schedule", "decay_steps")]


class ReproduceSpec(Strict):
    name: str
    finding: str  # the paper's claim, one sentence
    verdict: str  # a registered verdict kind (verdicts.VERDICTS): cooldown, averaging, equal_fp_loss, ...
    base: dict[str, Any]  # train config keys shared by every run
    runs: dict[str, dict[str, Any]]  # label -> keys that differ from base (merged into it)
    sweep: dict[str, Any] = Field(default_factory=dict)  # sweep config keys; trajectory and out are filled in
    # equal_fp_loss: run labels in the order the finding expects ΔQ L to fall (at equal FP loss)
    order: list[str] | None = None
    levels: int = Field(default=4, ge=1)  # equal_fp_loss: FP-loss levels compared per pair of runs
    minutes: float | None = None  # expected minutes at --scale 1 on 2 CPU cores (documentation)
    seeds: int = Field(default=1, ge=1)  # training seeds per run (--seeds overrides): base seed, +1, +2, ...
    model_runs: list[str] | None = None  # the runs --model swaps the preset of (default: every run)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "experiment name")  # its page and figures go to OUT/<name>/

    @field_validator("runs")
    @classmethod
    def _runs(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("an experiment needs at least one run")
        for label in v:
            check_name(label, "run label")  # its run folder is OUT/runs/<label>-<hash>
            if not label.replace("-", "").replace(".", "").replace("_", "").isalnum():
                raise ValueError(f"run label '{label}' may hold only letters, digits, '-', '_' and '.'")
        return v


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("qrobust.workflows.reproduction").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[ReproduceSpec, str]:
    """A built-in experiment by name (``f2``, ``f3``, ``f4``, ``wd``, ``formats``) or a YAML file; returns the spec and
    the YAML text it came from (for the provenance section of the report)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"experiment file '{p}' not found; give a YAML path or one of {', '.join(builtin_names())}")
        text = p.read_text()
        what = f"experiment file {p}"
        data = load_yaml(p)
    else:
        if str(name_or_path) not in builtin_names():
            raise ConfigError(f"unknown experiment '{name_or_path}'; known: {', '.join(builtin_names())}, all, "
                              "or a YAML path")
        f = resources.files("qrobust.workflows.reproduction").joinpath("configs", f"{name_or_path}.yaml")
        text = f.read_text()
        what = f"experiment '{name_or_path}'"
        data = parse_yaml(text, what)
    if overrides:
        data = merge(data, overrides)
    spec = parse_config(ReproduceSpec, data, what)
    verdicts.get_verdict(spec.verdict).check(spec, what)
    return spec, text


def merge(base: Any, over: Any) -> Any:
    """Deep merge of mappings; anything else in ``over`` replaces what ``base`` had."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def scale_train(cfg: dict[str, Any], scale: float) -> dict[str, Any]:
    """Every step count times ``scale`` (token budget, checkpoint spacing, warmup, decays, branch points),
    so the shape of the experiment stays and only its length changes."""
    cfg = copy.deepcopy(cfg)
    for path in SCALED:
        d = cfg
        for k in path[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict) and isinstance(d.get(path[-1]), int) and d[path[-1]] > 0:
            d[path[-1]] = _scaled(d[path[-1]], scale)
    for b in cfg.get("branches") or []:
        for k in ("from_step", "decay_steps"):
            if isinstance(b.get(k), int):
                b[k] = _scaled(b[k], scale)
    for a in cfg.get("averaging") or []:
        if isinstance(a.get("every"), int):
            a["every"] = _scaled(a["every"], scale)
    return cfg


def config_hash(cfg: TrainConfig) -> str:
    blob = json.dumps(cfg.model_dump(exclude={"out", "threads", "name"}), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def resolve_runs(spec: ReproduceSpec, out: Path, scale: float = 1.0, model: str | None = None,
                 threads: int | None = None, seed_index: int = 0) -> dict[str, TrainConfig]:
    """label -> the validated train config of that run, with its folder under ``out/runs``.

    ``seed_index`` k > 0: the same run trained with seed (its seed + k), which sets both the initial weights
    and the order of the training batches; its folder is ``<label>-seed<seed>-<hash>``. The data split and
    the evaluation blocks stay those of the base seed: every seed is measured on the same held-out text."""
    if scale <= 0:
        raise ConfigError(f"--scale must be positive, got {scale}")
    runs: dict[str, TrainConfig] = {}
    for label, over in spec.runs.items():
        data = scale_train(merge(spec.base, over), scale)
        if model and (spec.model_runs is None or label in spec.model_runs):
            data = merge(data, {"model": {"preset": model}})
        data.update(name=label, out="unset", threads=threads)
        if seed_index:
            data["seed"] = int(data.get("seed", 0)) + seed_index
        cfg = parse_config(TrainConfig, data, f"run '{label}' of experiment '{spec.name}'")
        folder = f"{label}-seed{cfg.seed}-{config_hash(cfg)}" if seed_index else f"{label}-{config_hash(cfg)}"
        runs[label] = cfg.model_copy(update={"out": str(out / "runs" / folder)})
    return runs


def resolve_sweep(spec: ReproduceSpec, run: TrainConfig, out: Path, threads: int | None = None,
                  seed_index: int = 0) -> SweepConfig:
    """The experiment's sweep for one run; its results folder sits beside the run's (``results/<folder>``),
    so experiments sharing a run share its records too. Seed k > 0 draws its own calibration windows
    (calibration seed + k): nothing but the evaluation text is shared between seeds."""
    data = {**spec.sweep, "trajectory": run.out, "out": str(out / "results" / Path(run.out).name), "threads": threads}
    if seed_index:
        calib = dict(data.get("calibration") or {})
        calib["seed"] = int(calib.get("seed", 0)) + seed_index
        data["calibration"] = calib
    return parse_config(SweepConfig, data, f"sweep of experiment '{spec.name}'")
