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
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import AverageConfig, EvalConfig, parse_config
from ..errors import ConfigError, QrobustWarning
from ..leftovers import clean as clean_leftovers
from ..names import safe_name
from ..sources import load_source, resolve_checkpoint
from ..trajectory import Checkpoint, Trajectory
from .averagers import AverageJob, greedy_soup, ingredients, plan_ema, plan_lawa, plan_soup
from .stream import PROVENANCE, weighted_mean, write_checkpoint
from ..io.files import STATE_FILE


def plan(trajs: list[Trajectory], spec: AverageConfig) -> list[AverageJob]:
    """The averaged checkpoints one averager makes from the given trajectories."""
    if spec.averager in ("lawa", "ema") and len(trajs) != 1:
        raise ConfigError(f"{spec.averager} averages along one trajectory; name exactly one source")
    if spec.averager == "lawa":
        return plan_lawa(trajs[0], spec.window, spec.stride, spec.runs)
    if spec.averager == "ema":
        return plan_ema(trajs[0], spec.beta, spec.runs)
    if spec.averager == "soup":
        return plan_soup(trajs)
    ing = ingredients(trajs)
    if len(ing) < 2:
        raise ConfigError(f"a greedy soup needs at least 2 ingredients (the last checkpoint of each run); "
                          f"got {len(ing)}")
    # which ingredients are kept is decided when the soup is made (it needs held-out losses)
    return [AverageJob("greedy-soup", max(c.step for c in ing), ing, [1 / len(ing)] * len(ing), ing[0],
                       {"averager": "greedy-soup", "ingredients": len(ing)}, greedy=True)]


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
    parent = None if job.params["averager"] in ("soup", "greedy-soup") else job.like.run
    return Checkpoint(name=f"{job.run}/step-{job.step:07d}", path=str(folder_of(job, out).resolve()), step=job.step,
                      tokens=job.like.tokens, lr=None, phase=job.like.phase, run=job.run, parent=parent)


def combined(base: Trajectory, originals: list[Checkpoint], jobs: list[AverageJob], out: Path,
             name: str | None = None) -> Trajectory:
    """Originals + averaged checkpoints; averaged runs are marked ``averaged`` in the run table."""
    runs = dict(base.runs)
    for j in jobs:
        parent = None if j.params["averager"] in ("soup", "greedy-soup") else j.like.run
        runs.setdefault(j.run, {"averaged": {k: v for k, v in j.params.items() if k != "log"}, "parent": parent})
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


def average(sources: list[str | dict], averager: str, out: str | Path, window: int = 5, stride: int = 1,
            beta: float = 0.9, runs: list[str] | None = None, eval_config: dict | None = None,
            progress: bool = True, allow_pickle: bool = False, trust_remote_code: bool = False) -> Trajectory:
    """Average checkpoints of ``sources``; returns the trajectory of originals + averaged runs (also saved)."""
    spec = parse_config(AverageConfig, {"averager": averager, "window": window, "stride": stride, "beta": beta,
                                        "runs": runs}, "averaging options")
    if not sources:
        raise ConfigError("name at least one trajectory source to average")
    out = Path(out)
    clean_leftovers(out, recursive=False)  # half-written averaged folders of a killed run (never a live
    clean_leftovers(out / "checkpoints")  # writer's)
    trajs = [load_source(s) for s in sources]
    jobs = plan(trajs, spec)
    ecfg = parse_config(EvalConfig, eval_config or {}, "eval settings")
    _check_greedy_corpus(trajs, jobs, ecfg)
    for j in jobs:  # every name checked before anything is written
        folder_of(j, out)
    for j in tqdm(jobs, desc=averager, disable=not progress, unit="ckpt"):
        make(j, out, ecfg, allow_pickle, trust_remote_code)
    traj = combined(trajs[0], [c for t in trajs for c in t], jobs, out, name=f"{trajs[0].name}-{averager}")
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


__all__ = ["average", "checkpoint_of", "combined", "folder_of", "is_made", "make", "plan", "plan_for_sweep"]
