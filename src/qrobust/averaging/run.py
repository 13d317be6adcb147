"""Plan averaged checkpoints, make them (streamed, with provenance), and put them beside the originals.

Output folder::

    checkpoints/<averaged run>/step-NNNNNNN/   model.safetensors + config/tokenizer + qrobust_average.json
    trajectory.json                            original runs (their own paths) + averaged runs

Planning is cheap and happens up front (bad windows, too few ingredients fail before anything is read);
making one averaged checkpoint is a separate step so a sweep can do it lazily, under the same claim as the
quantization of that checkpoint. A folder whose recorded plan (inputs, weights, averager options) equals
the current plan is never rewritten.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import AverageConfig, EvalConfig, parse_config
from ..errors import ConfigError, QrobustWarning
from ..leftovers import clean as clean_leftovers
from ..names import safe_name
from ..sources import load_source, resolve_checkpoint
from ..trajectory import Checkpoint, Trajectory
from .averagers import greedy_soup
from .registry import AverageJob, planner
from .stream import PROVENANCE, weighted_mean, write_checkpoint
from ..io.files import STATE_FILE


def plan(trajs: list[Trajectory], spec: AverageConfig) -> list[AverageJob]:
    """The averaged checkpoints one averager makes from the given trajectories."""
    return planner(spec.averager)(trajs, spec)


def folder_of(job: AverageJob, out: Path) -> Path:
    """Where the averaged checkpoint lives; its run name (built from the source's run names) must stay one
    folder name inside ``out``."""
    return Path(out) / "checkpoints" / safe_name(job.run, "averaged run name") / f"step-{job.step:07d}"


def _plan_id(job: AverageJob, paths: list[Path], eval_cfg: EvalConfig | None) -> dict[str, Any]:
    """What the folder's content is a function of; an equal recorded plan means 'already made'."""
    pid: dict[str, Any] = {"run": job.run, "step": job.step, "params": job.params,
                           "inputs": [str(p) for p in paths]}
    if job.greedy:
        pid["eval"] = (eval_cfg or EvalConfig()).model_dump()
    else:
        pid["weights"] = job.weights
    return pid


def _local_paths(job: AverageJob, allow_pickle: bool) -> list[Path]:
    return [resolve_checkpoint(c, allow_pickle) for c in job.inputs]


def is_made(job: AverageJob, out: Path, eval_cfg: EvalConfig | None = None) -> bool:
    """True when the averaged folder exists with this exact plan (inputs named by their listed paths)."""
    done = folder_of(job, out) / PROVENANCE
    if not done.is_file():
        return False
    try:
        made = json.loads(done.read_text())
    except (OSError, ValueError):
        made = None
    if not isinstance(made, dict):  # damaged (a kill cannot do this: the folder is renamed into place whole)
        warnings.warn(f"'{done}' is not a readable averaging record; the averaged checkpoint is made again",
                      QrobustWarning, stacklevel=2)
        return False
    return made.get("plan") == _plan_id(job, [Path(c.path) for c in job.inputs], eval_cfg)


def make(job: AverageJob, out: Path, eval_cfg: EvalConfig | None = None, allow_pickle: bool = False,
         trust_remote_code: bool = False) -> Path:
    """Write the averaged checkpoint of ``job`` unless it is already made; returns its folder."""
    folder = folder_of(job, out)
    if is_made(job, out, eval_cfg):
        return folder
    paths = _local_paths(job, allow_pickle)
    inputs, weights, params = job.inputs, job.weights, dict(job.params)
    if job.greedy:
        kept, log = _choose_greedy(paths, eval_cfg or EvalConfig(), allow_pickle, trust_remote_code)
        inputs, weights = [job.inputs[i] for i in kept], [1 / len(kept)] * len(kept)
        paths = [paths[i] for i in kept]
        params["log"] = log
    prov = {"plan": _plan_id(job, [Path(c.path) for c in job.inputs], eval_cfg), "params": params, "run": job.run,
            "step": job.step, "inputs": [{"path": str(p), "run": c.run, "step": c.step, "weight": w}
                                         for p, c, w in zip(paths, inputs, weights)]}
    like = paths[0] if job.greedy else paths[job.inputs.index(job.like)]
    write_checkpoint(weighted_mean(paths, weights), like, folder, prov, _state(like, job.step))
    return folder


def checkpoint_of(job: AverageJob, out: Path) -> Checkpoint:
    """The averaged checkpoint as a trajectory entry (its folder may not be made yet)."""
    return Checkpoint(name=f"{job.run}/step-{job.step:07d}", path=str(folder_of(job, out).resolve()), step=job.step,
                      tokens=job.like.tokens, lr=None, phase=job.like.phase, run=job.run, parent=job.parent)


def combined(base: Trajectory, originals: list[Checkpoint], jobs: list[AverageJob], out: Path,
             name: str | None = None) -> Trajectory:
    """Originals + averaged checkpoints; averaged runs are marked ``averaged`` in the run table."""
    runs = dict(base.runs)
    for j in jobs:
        runs.setdefault(j.run, {"averaged": {k: v for k, v in j.params.items() if k != "log"}, "parent": j.parent})
    made = [checkpoint_of(j, out) for j in jobs]
    return Trajectory(name=name or base.name, checkpoints=list(originals) + made, runs=runs, data=base.data,
                      source=str(out), config=base.config, provenance=base.provenance)


def plan_for_sweep(traj: Trajectory, specs: list[AverageConfig], out: Path
                   ) -> tuple[Trajectory, dict[str, AverageJob]]:
    """A sweep's trajectory with its averaged checkpoints added, and averaged path -> job (made lazily)."""
    jobs: list[AverageJob] = []
    extra: list[Checkpoint] = []
    for spec in specs:
        trajs = [load_source(s) for s in spec.sources] if spec.sources else [traj]
        if spec.sources:  # soup ingredients from other sources are swept too, as originals
            extra += [c for t in trajs for c in t if c.path not in {x.path for x in traj}]
        jobs += plan(trajs, spec)
    runs = [j.run for j in jobs]
    clash = sorted({r for r in runs if r in {c.run for c in traj}})
    if clash:
        raise ConfigError(f"averaged run name '{clash[0]}' is already a run of '{traj.name}'; rename that run")
    keyed: dict[str, AverageJob] = {}
    for j in jobs:
        k = str(folder_of(j, out).resolve())
        if k in keyed:
            raise ConfigError(f"two averagers in 'average' make the same checkpoint {j.run}/step-{j.step}; "
                              "remove the duplicate entry")
        keyed[k] = j
    return combined(traj, list(traj) + extra, jobs, out), keyed


@dataclass(frozen=True)
class AverageOptions:
    """How an averaging run is carried out (not what it computes: that is :class:`AverageConfig`)."""

    eval_config: dict[str, Any] | None = None  # greedy soup: EvalConfig keys of the set ranking ingredients
    progress: bool = True
    allow_pickle: bool = False
    trust_remote_code: bool = False


SPEC_KEYS = ("window", "stride", "beta", "runs")  # AverageConfig keys given as keywords


def average_settings(averager: str, options: AverageOptions | None,
                     settings: dict[str, Any]) -> tuple[AverageConfig, AverageOptions]:
    """Keywords of :func:`average` split into what is averaged and how; an unknown keyword is one line."""
    how = {f.name for f in fields(AverageOptions)}
    unknown = sorted(set(settings) - how - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown averaging option '{unknown[0]}'; known: {', '.join([*SPEC_KEYS, *sorted(how)])}")
    what = {"averager": averager, **{k: v for k, v in settings.items() if k in SPEC_KEYS}}
    spec = parse_config(AverageConfig, what, "averaging options")
    return spec, replace(options or AverageOptions(), **{k: v for k, v in settings.items() if k in how})


def average(sources: list[str | dict], averager: str, out: str | Path, *, options: AverageOptions | None = None,
            **settings: Any) -> Trajectory:
    """Average checkpoints of ``sources``; returns the trajectory of originals + averaged runs (also saved).
    ``settings``: ``window``, ``stride``, ``beta``, ``runs`` (:class:`AverageConfig`) and any field of
    :class:`AverageOptions` (``eval_config``, ``progress``, ``allow_pickle``, ``trust_remote_code``)."""
    spec, opts = average_settings(averager, options, settings)
    return run_average(sources, spec, out, opts)


def run_average(sources: list[str | dict], spec: AverageConfig, out: str | Path, opts: AverageOptions) -> Trajectory:
    """:func:`average` with its options typed."""
    if not sources:
        raise ConfigError("name at least one trajectory source to average")
    out = Path(out)
    clean_leftovers(out, recursive=False)  # half-written averaged folders of a killed run (never a live
    clean_leftovers(out / "checkpoints")  # writer's)
    trajs = [load_source(s) for s in sources]
    jobs = plan(trajs, spec)
    ecfg = parse_config(EvalConfig, opts.eval_config or {}, "eval settings")
    _check_greedy_corpus(trajs, jobs, ecfg)
    for j in jobs:  # every name checked before anything is written
        folder_of(j, out)
    for j in tqdm(jobs, desc=spec.averager, disable=not opts.progress, unit="ckpt"):
        make(j, out, ecfg, opts.allow_pickle, opts.trust_remote_code)
    traj = combined(trajs[0], [c for t in trajs for c in t], jobs, out, name=f"{trajs[0].name}-{spec.averager}")
    traj.save(out / "trajectory.json")
    return traj


def _state(like: Path, step: int) -> dict[str, Any] | None:
    st = like / STATE_FILE
    if not st.is_file():
        return None
    data = json.loads(st.read_text()).get("data")
    return {"step": step, "data": data} if data else {"step": step}


def _check_greedy_corpus(trajs: list[Trajectory], jobs: list[AverageJob], ecfg: EvalConfig) -> None:
    """A greedy soup ranks its ingredients by held-out loss on the training corpus; ingredients without
    one (a preset, foreign checkpoints) need the corpus named, before anything is read or written."""
    from ..data.evalset import has_training_data
    greedy = [c for j in jobs if j.greedy for c in j.inputs]
    if not greedy or ecfg.corpus:
        return
    if any(t.preset for t in trajs) or any(has_training_data(c) is False for c in greedy):
        raise ConfigError("a greedy soup chooses ingredients by held-out loss, and its checkpoints have no "
                          "qrobust training corpus (a preset or foreign checkpoints): name one with --corpus "
                          "(eval: {corpus: ...} in a sweep)")


def _choose_greedy(paths: list[Path], ecfg: EvalConfig, allow_pickle: bool,
                   trust_remote_code: bool = False) -> tuple[list[int], list[dict]]:
    """Greedy soup with held-out loss on the evaluation blocks a sweep would use."""
    from ..data.tokenizer import load_tokenizer
    from ..evaluate import evaluate_loss
    from ..models import check_vocab, load_checkpoint
    from ..data.evalset import build_eval_set, checkpoint_data_config, tokenizer_fingerprint

    tok = load_tokenizer(paths[0], trust_remote_code)
    es = build_eval_set(ecfg, checkpoint_data_config(paths[0]), tok, tokenizer_fingerprint(paths[0]))
    model = load_checkpoint(paths[0], allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    check_vocab(model, tok, paths[0])

    def loss_of(tensors, name: str) -> float:
        model.load_state_dict(tensors, strict=False)
        return evaluate_loss(model, es.blocks, ecfg.batch_size, name=name).loss

    singles = [loss_of(weighted_mean([p], [1.0]), f"checkpoint '{p}'") for p in paths]
    return greedy_soup(paths, lambda ps: loss_of(weighted_mean(ps, [1 / len(ps)] * len(ps)),
                                                 f"the soup of {', '.join(map(str, ps))}"), singles)


__all__ = ["AverageOptions", "average", "average_settings", "checkpoint_of", "combined", "folder_of", "is_made", "make", "plan", "plan_for_sweep", "run_average"]
