"""The Plan: a sweep's checkpoint groups, each with every key it reads or writes computed once.

A group (:class:`Job`) is one checkpoint and every variant of the sweep: its claim key, FP key, one record
key per variant (and per variant's downstream tasks), the FP task key and the geometry key. Planning a group
reads files only (weights fingerprint, tokenizer, the eval-set ids built from it); no model is loaded, and
from the keys alone the store tells what is missing, so a group whose records all exist is never loaded.
Nothing outside this module computes a record key.

Groups are planned when first needed, in order (:meth:`Plan.job`): an averaged checkpoint of the sweep's
``average`` list has no weights to fingerprint until a worker has made it, and a hub revision is fetched
only when its group comes up. ``Plan.todo`` plans every group that can be planned now (the dry run).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..averaging.averagers import AverageJob
from ..averaging.run import folder_of, is_made
from ..config import DataConfig, SweepConfig
from ..data.evalset import file_fingerprint, tokenizer_fingerprint
from ..data.tokenizer import load_tokenizer
from ..io.keys import record_key
from ..models import weight_safetensors
from ..quant import QuantSpec, needs_calibration
from ..results.records import Subject
from ..results.store import Store
from ..sources import resolve_checkpoint
from ..trajectory import Checkpoint, Trajectory
from .prepare import averaged_dir, data_config, variants
from .sets import BlockSets


def checkpoint_identity(ck: Checkpoint, dtype: str = "float32") -> dict[str, Any]:
    """What identifies a checkpoint's numbers: its weights, and the dtype it runs in when not float32."""
    weights = weight_safetensors(Path(ck.path)) or sorted(Path(ck.path).glob("*.bin"))
    ident = {"name": ck.name, "step": ck.step, "weights": file_fingerprint(weights) if weights else ck.path}
    if dtype != "float32":
        ident["dtype"] = dtype
    return ident


def calibration_identity(cfg: SweepConfig, spec: QuantSpec) -> dict[str, Any] | None:
    """The calibration settings a variant's numbers depend on (None for a method that does not calibrate)."""
    if not needs_calibration(spec):
        return None
    return cfg.calibration.model_dump()


def average_claim_key(cfg: SweepConfig, job: AverageJob) -> str:
    """The claim under which one worker makes an averaged checkpoint."""
    return record_key({"average": str(folder_of(job, averaged_dir(cfg)))})


def tasks_work_key(names: list[str], context: int, data: DataConfig | None) -> str:
    """The work folder of generated downstream tasks: one per (task specs, model context, training data), so
    checkpoints of a run share generated tasks and lm-eval's task index."""
    return record_key({"tasks": names, "context": context, "data": data.model_dump() if data else None})


@dataclass(frozen=True)
class Keys:
    """Every key of one checkpoint group."""

    claim: str
    fp: str
    variants: dict[QuantSpec, str]
    tasks: dict[QuantSpec, str]  # empty when the sweep runs no downstream tasks
    tasks_fp: str | None
    geometry: str | None


def group_keys(cfg: SweepConfig, ident: dict[str, Any], specs: list[QuantSpec], eval_id: str,
               geometry_id: str | None) -> Keys:
    """The keys of a checkpoint (``ident``) whose eval set is ``eval_id`` (geometry set ``geometry_id``)."""
    def variant(spec: QuantSpec, measured: tuple[str, Any]) -> str:
        return record_key({"checkpoint": ident, "variant": spec.to_dict(),
                           "calibration": calibration_identity(cfg, spec), measured[0]: measured[1]})
    tasks = cfg.tasks.identity() if cfg.tasks is not None else None
    return Keys(claim=record_key({"checkpoint": ident}), fp=record_key({"checkpoint": ident, "eval": eval_id}),
                variants={s: variant(s, ("eval", eval_id)) for s in specs},
                tasks={s: variant(s, ("tasks", tasks)) for s in specs} if tasks is not None else {},
                tasks_fp=record_key({"checkpoint": ident, "tasks": tasks}) if tasks is not None else None,
                geometry=(record_key({"checkpoint": ident, "geometry": cfg.geometry.model_dump(), "eval": geometry_id})
                          if cfg.geometry is not None else None))


@dataclass
class Job:
    """One checkpoint group: the checkpoint (a hub revision resolved to its local folder), what identifies
    its numbers, its training data config and tokenizer fingerprint, and its keys."""

    index: int  # position among this worker's checkpoints
    ck: Checkpoint
    identity: dict[str, Any]
    data_cfg: DataConfig | None
    tok_fp: str
    keys: Keys
    tok: Any = None  # the tokenizer, when planning had to load it (handed to the group's run once)

    def subject(self, trajectory: str) -> Subject:
        return Subject(trajectory, self.ck, self.identity)

    def todo(self, store: Store) -> list[QuantSpec]:
        """The variants whose record (or task record) is missing or not a valid record."""
        k = self.keys
        return [s for s in k.variants if not store.has(k.variants[s])
                or (k.tasks and not store.has(k.tasks[s], kind="tasks"))]

    def needs_geometry(self, store: Store) -> bool:
        return self.keys.geometry is not None and not store.has(self.keys.geometry, kind="geometry")

    def tokenizer(self, trust_remote_code: bool) -> Any:
        """The tokenizer planning loaded (once), else a fresh load."""
        tok = self.tok or load_tokenizer(self.ck.path, trust_remote_code)
        self.tok = None
        return tok


def plan_job(cfg: SweepConfig, traj: Trajectory, listed: Checkpoint, specs: list[QuantSpec],
             sets: BlockSets) -> Job:
    """Plan one checkpoint group from files (no model loads). A hub revision is fetched (or found in the HF
    cache) here; records keep its repo and revision, with the local snapshot folder as its path."""
    ck = replace(listed, path=str(resolve_checkpoint(listed, cfg.allow_pickle)))
    ident = checkpoint_identity(ck, cfg.dtype)
    data_cfg = data_config(cfg, traj, ck)
    tok_fp = tokenizer_fingerprint(ck.path)
    # record keys include the eval-set id, which depends on the tokenizer: the set is built once per
    # tokenizer (cached), so later checkpoints of the run need no tokenizer load at all here
    tok = None
    es_id = sets.known_id(data_cfg, tok_fp)
    if es_id is None:
        tok = load_tokenizer(ck.path, cfg.trust_remote_code)
        es_id = sets.eval_set(data_cfg, tok, tok_fp).id
    gs_id = None
    if cfg.geometry is not None:
        gs_id = sets.known_id(data_cfg, tok_fp, geometry=True)
        if gs_id is None:
            tok = tok or load_tokenizer(ck.path, cfg.trust_remote_code)
            gs_id = sets.geometry_set(data_cfg, tok, tok_fp).id
    return Job(-1, ck, ident, data_cfg, tok_fp, group_keys(cfg, ident, specs, es_id, gs_id), tok)


class Plan:
    """This worker's checkpoint groups (``checkpoints``, in order), each planned once, when first needed;
    ``pending`` maps an averaged checkpoint's folder to the job that makes it."""

    def __init__(self, cfg: SweepConfig, traj: Trajectory, checkpoints: list[Checkpoint],
                 pending: dict[str, AverageJob], sets: BlockSets):
        self.cfg, self.traj, self.checkpoints, self.pending, self.sets = cfg, traj, checkpoints, pending, sets
        self.specs = variants(cfg)
        self.jobs: dict[int, Job] = {}

    def __len__(self) -> int:
        return len(self.checkpoints)

    def average(self, i: int) -> AverageJob | None:
        """The averaging job that makes checkpoint ``i`` first (None for a checkpoint on disk)."""
        return self.pending.get(self.checkpoints[i].path)

    def planned(self, i: int) -> bool:
        return i in self.jobs

    def job(self, i: int) -> Job:
        if i not in self.jobs:
            job = plan_job(self.cfg, self.traj, self.checkpoints[i], self.specs, self.sets)
            job.index = i
            self.jobs[i] = job
        return self.jobs[i]

    def todo(self, store: Store | None) -> list[tuple[Checkpoint, list[QuantSpec] | None]]:
        """Per checkpoint, the variants missing from ``store`` (no store yet: all of them); None for an
        averaged checkpoint not made yet, which cannot be planned before it is (all its variants are to do)."""
        made = averaged_dir(self.cfg)
        out: list[tuple[Checkpoint, list[QuantSpec] | None]] = []
        for i, ck in enumerate(self.checkpoints):
            average = self.average(i)
            if average is not None and not is_made(average, made, self.cfg.eval):
                out.append((ck, None))
            else:
                job = self.job(i)
                out.append((ck, job.todo(store) if store is not None else list(self.specs)))
        return out
