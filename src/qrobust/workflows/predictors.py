"""``qrobust predictors``: how well each cheap predictor ranks checkpoints like their measured GPTQ ΔQ L.

For every checkpoint of the given stores with a ``method`` record at ``bits`` (any group size), the
checkpoint is loaded (safe loader), its evaluation blocks and calibration windows are built from its own
training data config (as a sweep builds them), and :func:`~qrobust.monitor.predictors.compute_predictors`
runs each predictor for an RTN variant at the record's bits, group size and grid, timed. Values are cached
per checkpoint (one atomic JSON under ``OUT/cache``, keyed by the checkpoint path, its weight files and the
settings), so a re-run computes only what is missing. :mod:`.predictor_report` turns the values into the
correlations, the table, ``summary.json``, the CSV and the figure.
"""
from __future__ import annotations

import inspect
import json
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import torch

from ..data.checkpoint_blocks import calib_blocks, eval_blocks
from ..data.evalset import checkpoint_data_config
from ..data.tokenizer import file_fingerprint, tokenizer_fingerprint
from ..errors import ConfigError, QrobustError, QrobustWarning
from ..io.atomic import write_text
from ..io.keys import record_key
from ..models import load_checkpoint
from ..monitor.predictors import PREDICTORS, compute_predictors
from ..quant import QuantSpec
from ..quant.registry import base_label
from ..results.records import VariantRecord
from ..results.store import Store
from .checkpoint import quant_spec
from .predictor_report import write_outputs
from .predictor_stats import CONFIDENCE, N_BOOT

CACHE_SCHEMA = "qrobust.predictor-cache/1"


@dataclass(frozen=True)
class ValidationOptions:
    """What is validated and how: the measured variant (``method`` at ``bits``), the predictors (None:
    every registered one), the blocks they read, and the bootstrap."""

    bits: int = 3
    method: str = "gptq"
    predictors: tuple[str, ...] | None = None
    n_blocks: int = 32
    calib_samples: int = 16
    n_boot: int = N_BOOT
    seed: int = 0
    confidence: float = CONFIDENCE

    @classmethod
    def of(cls, settings: dict[str, Any]) -> "ValidationOptions":
        """From keyword settings; an unknown name or a bad value is one line."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(settings) - known)
        if bad:
            raise ConfigError(f"unknown predictor-validation setting '{bad[0]}'; known: {', '.join(sorted(known))}")
        s = dict(settings)
        if s.get("predictors") is not None:
            s["predictors"] = tuple(s["predictors"])
        opts = cls(**s)
        for name in ("n_blocks", "calib_samples"):
            if not isinstance(getattr(opts, name), int) or getattr(opts, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(opts, name)!r}")
        return opts

    def names(self) -> list[str]:
        """The predictors to run, each checked against the registry (unknown: one line listing the known)."""
        names = list(self.predictors) if self.predictors else list(PREDICTORS)
        if not names:
            raise ConfigError("no predictors are registered; import a module that registers some "
                              "(qrobust.monitor.predictors) or name them with --predictors")
        for n in names:
            PREDICTORS.lookup(n)
        return names


@dataclass
class Target:
    """One checkpoint's measured variant (the truth) and the predictor values computed for it."""

    store: str
    record: VariantRecord
    values: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        v = self.record.variant
        return v.label or base_label(v.method, v.bits, v.group_size, v.sym)

    @property
    def rtn(self) -> QuantSpec:
        v = self.record.variant
        return quant_spec("rtn", int(v.bits or 0), int(v.group_size or 0), bool(v.sym))

    def keys(self, names: Iterable[str]) -> dict[str, str | None]:
        """Result key -> the spec label it needs (None for per-weight predictors), as compute_predictors names them."""
        out: dict[str, str | None] = {}
        for n in names:
            per = PREDICTORS[n].per_variant
            out[f"{n}/{self.rtn.label}" if per else n] = self.rtn.label if per else None
        return out


def store_targets(root: str | Path, opts: ValidationOptions) -> list[Target]:
    """The store's records of the measured variant with a ΔQ L, one per (checkpoint, variant) (the first
    by the store's order when several eval sets measured it); refused when it has none."""
    store = Store(root, create=False)
    seen: set[tuple[str, str]] = set()
    out: list[Target] = []
    for r in store.records():
        v = r.variant
        if v.method != opts.method or v.bits != opts.bits or r.metrics.dq_rel is None or not r.checkpoint.path:
            continue
        t = Target(str(root), r)
        if (r.checkpoint.path, t.label) not in seen:
            seen.add((r.checkpoint.path, t.label))
            out.append(t)
    if not out:
        raise ConfigError(f"results folder '{root}' holds no {opts.method} records at {opts.bits} bits; sweep it "
                          f"with method {opts.method} and bits {opts.bits} first, or choose --method / --bits")
    return out


def collect_targets(stores: list[str | Path], opts: ValidationOptions) -> tuple[list[Target], list[str]]:
    """Every store's targets, without repeats across stores; checkpoints whose folder is gone are skipped
    with one warning line (refused when none is left). Returns (targets, skipped checkpoint paths)."""
    if not stores:
        raise ConfigError("give at least one results folder")
    targets: list[Target] = []
    seen: set[tuple[str, str]] = set()
    for root in stores:
        for t in store_targets(root, opts):
            key = (str(Path(t.record.checkpoint.path).resolve()), t.label)
            if key not in seen:
                seen.add(key)
                targets.append(t)
    gone = sorted({t.record.checkpoint.path for t in targets if not Path(t.record.checkpoint.path).is_dir()})
    if gone and len(gone) == len({t.record.checkpoint.path for t in targets}):
        raise QrobustError(f"no checkpoint folder of the {opts.method} records exists any more (e.g. '{gone[0]}'); "
                           "the predictors need the weights: restore the checkpoints")
    if gone:
        warnings.warn(f"skipped {len(gone)} checkpoint(s) whose folder is gone (e.g. '{gone[0]}')", QrobustWarning,
                      stacklevel=2)
    return [t for t in targets if t.record.checkpoint.path not in gone], gone


def weights_fingerprint(folder: Path) -> list[list[Any]]:
    """Name, size and modification time of the files that define the model, so a re-trained checkpoint
    at the same path is not served stale values."""
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), folder / "config.json"])
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()]


def cache_file(out: Path, folder: Path, opts: ValidationOptions) -> tuple[Path, dict[str, Any]]:
    """Where a checkpoint's values live, and the identity they were computed under."""
    ident = {"checkpoint": str(folder.resolve()), "weights": weights_fingerprint(folder),
             "n_blocks": opts.n_blocks, "calib_samples": opts.calib_samples}
    return out / "cache" / f"{record_key(ident)}.json", ident


def code_fingerprint(name: str) -> str:
    """The code a predictor's value comes from (its function's file and the predictors package), so a value
    cached by an older implementation is recomputed rather than reused."""
    from ..monitor.predictors import base
    own = inspect.getsourcefile(PREDICTORS[name].fn)
    files = {*Path(base.__file__).parent.glob("*.py"), *([Path(own)] if own else [])}
    return file_fingerprint([p for p in files if p.is_file()])


def read_cache(path: Path, ident: dict[str, Any], codes: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{"values", "seconds", "code"} cached under ``path``, less the values of predictors whose code is not
    ``codes[name]`` now; empty when absent, damaged or for another identity."""
    empty: dict[str, dict[str, Any]] = {"values": {}, "seconds": {}, "code": {}}
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return empty
    if not isinstance(d, dict) or d.get("schema") != CACHE_SCHEMA or d.get("identity") != json.loads(json.dumps(ident)):
        return empty
    got = {part: dict(d.get(part) or {}) for part in ("values", "seconds", "code")}
    for key in list(got["values"]):
        name = key.split("/")[0]
        if name in codes and got["code"].get(key) != codes[name]:
            del got["values"][key]
    return got


def missing_work(targets: list[Target], names: list[str], have: dict[str, float]) -> list[tuple[str, list[QuantSpec]]]:
    """The compute_predictors calls a checkpoint still needs, one per predictor (and RTN spec for per-variant
    ones), each only for a key not cached."""
    calls: list[tuple[str, list[QuantSpec]]] = [(n, []) for n in names
                                                if not PREDICTORS[n].per_variant and n not in have]
    for label, spec in {t.rtn.label: t.rtn for t in targets}.items():
        calls += [(n, [spec]) for n in names if PREDICTORS[n].per_variant and f"{n}/{label}" not in have]
    return calls


def blocks_source(folder: Path) -> str:
    """What a checkpoint's blocks depend on: its training data config and tokenizer (the model config too
    when it has no data config), so the checkpoints of one run tokenize their data once."""
    data_cfg = checkpoint_data_config(folder)
    model = "" if data_cfg is not None else (folder / "config.json").read_text()
    return record_key({"data": data_cfg.model_dump(mode="json") if data_cfg else None, "model": model,
                       "tokenizer": tokenizer_fingerprint(folder)})


def checkpoint_blocks(folder: Path, costs: set[str], opts: ValidationOptions,
                      memo: dict[tuple[str, str], torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(calibration windows, evaluation blocks) of one checkpoint, each built only when a predictor reads it
    and only once per data source (``memo``)."""
    src = blocks_source(folder)
    if "calibration" in costs and ("calibration", src) not in memo:
        memo["calibration", src] = calib_blocks(folder, n_samples=opts.calib_samples)
    if "eval" in costs and ("eval", src) not in memo:
        memo["eval", src] = eval_blocks(folder, n_blocks=opts.n_blocks)
    return (memo.get(("calibration", src)) if "calibration" in costs else None,
            memo.get(("eval", src)) if "eval" in costs else None)


def compute_checkpoint(folder: Path, calls: list[tuple[str, list[QuantSpec]]], opts: ValidationOptions,
                       memo: dict[tuple[str, str], torch.Tensor]) -> dict[str, dict[str, float]]:
    """Run the missing predictor calls on one checkpoint, each alone with a fresh cache: its seconds are
    what it costs by itself (work predictors share, such as the calibration Hessians, is charged to each),
    so its cost ratio holds when it is the only one run."""
    costs = {PREDICTORS[n].cost for n, _ in calls}
    calib, blocks = checkpoint_blocks(folder, costs, opts, memo)
    model = load_checkpoint(folder)
    model.eval()
    got: dict[str, dict[str, float]] = {"values": {}, "seconds": {}}
    for name, specs in calls:
        pv = compute_predictors(model, [name], specs, calib, blocks, {})
        got["values"].update(pv.values)
        got["seconds"].update(pv.seconds)
    return got


def fill_values(targets: list[Target], names: list[str], out: Path, opts: ValidationOptions,
                progress: bool = True) -> int:
    """Give every target its predictor values, from the cache or computed (then cached); returns how many
    checkpoints needed computing."""
    by_folder: dict[str, list[Target]] = {}
    for t in targets:
        by_folder.setdefault(t.record.checkpoint.path, []).append(t)
    computed, memo = 0, {}
    codes = {n: code_fingerprint(n) for n in names}
    for i, (path, ts) in enumerate(by_folder.items(), 1):
        folder = Path(path)
        cfile, ident = cache_file(out, folder, opts)
        have = read_cache(cfile, ident, codes)
        calls = missing_work(ts, names, have["values"])
        if calls:
            got = compute_checkpoint(folder, calls, opts, memo)
            have["values"].update(got["values"])
            have["seconds"].update(got["seconds"])
            have["code"].update({k: codes[k.split("/")[0]] for k in got["values"]})
            write_text(cfile, json.dumps({"schema": CACHE_SCHEMA, "identity": ident, **have}, indent=1),
                       "predictor cache")
            computed += 1
        if progress:
            print(f"predictors: [{i}/{len(by_folder)}] {ts[0].record.checkpoint.name}: "
                  + ("computed" if calls else "cached"), file=sys.stderr)
        for t in ts:
            for key in t.keys(names):
                if key in have["values"]:
                    t.values[key] = float(have["values"][key])
                    t.seconds[key] = float(have["seconds"].get(key, float("nan")))
    return computed


def run_validation(stores: list[str | Path], out: str | Path | None = None, opts: ValidationOptions | None = None,
                   threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Validate the predictors against the stores' measured records; writes ``summary.json``, the CSV and the
    figure into ``out`` (default ``<first store>/predictors``) and returns the summary."""
    opts = opts or ValidationOptions()
    names = opts.names()  # an unknown predictor is refused before any store is read
    if threads:
        torch.set_num_threads(threads)
    targets, skipped = collect_targets(list(stores), opts)
    folder = Path(out) if out is not None else Path(stores[0]) / "predictors"
    folder.mkdir(parents=True, exist_ok=True)
    computed = fill_values(targets, names, folder, opts, progress)
    settings = {**asdict(opts), "predictors": names, "stores": [str(s) for s in stores]}
    return write_outputs(targets, names, folder, settings, {"skipped": skipped, "computed": computed})
