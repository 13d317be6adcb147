"""``average``: plan, stream, write averaged checkpoints with provenance, and a manifest that puts the
averaged runs beside the original ones (so ``sweep`` and ``report`` treat them like any checkpoint).

Output folder::

    checkpoints/<averaged run>/step-NNNNNNN/   model.safetensors + config/tokenizer + qrobust_average.json
    trajectory.json                            original runs (their own paths) + averaged runs

Re-running skips averaged checkpoints whose provenance (inputs and weights) is unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..sources import load_source, resolve_checkpoint
from ..trajectory import Checkpoint, Trajectory
from .averagers import AVERAGERS, AverageJob, greedy_soup, ingredients, plan_ema, plan_lawa, plan_soup
from .stream import PROVENANCE, weighted_mean, write_checkpoint


def _provenance(job: AverageJob, paths: list[Path]) -> dict[str, Any]:
    return {"params": job.params, "run": job.run, "step": job.step,
            "inputs": [{"path": str(p), "run": c.run, "step": c.step, "weight": w}
                       for p, c, w in zip(paths, job.inputs, job.weights)]}


def _state(like: Path, step: int) -> dict[str, Any] | None:
    st = like / "qrobust_state.json"
    if not st.is_file():
        return None
    data = json.loads(st.read_text()).get("data")
    return {"step": step, "data": data} if data else {"step": step}


def _run_job(job: AverageJob, out: Path, allow_pickle: bool = False) -> Checkpoint:
    paths = [resolve_checkpoint(c, allow_pickle) for c in job.inputs]
    prov = _provenance(job, paths)
    folder = out / "checkpoints" / job.run / f"step-{job.step:07d}"
    done = folder / PROVENANCE
    if not (done.is_file() and json.loads(done.read_text()) == prov):
        like = paths[job.inputs.index(job.like)]
        write_checkpoint(weighted_mean(paths, job.weights), like, folder, prov, _state(like, job.step))
    parent = None if job.params["averager"] in ("soup", "greedy-soup") else job.like.run
    return Checkpoint(name=f"step-{job.step:07d}", path=str(folder.resolve()), step=job.step, tokens=job.like.tokens,
                      lr=None, phase=job.like.phase, run=job.run, parent=parent)


def average(sources: list[str | dict], averager: str, out: str | Path, window: int = 5, stride: int = 1,
            beta: float = 0.9, runs: list[str] | None = None, eval_config: dict | None = None,
            progress: bool = True, allow_pickle: bool = False) -> Trajectory:
    """Average checkpoints of ``sources``; returns the trajectory of originals + averaged runs (also saved)."""
    if averager not in AVERAGERS:
        raise ConfigError(f"unknown averager '{averager}'; known: {', '.join(AVERAGERS)}")
    if not sources:
        raise ConfigError("name at least one trajectory source to average")
    out = Path(out)
    trajs = [load_source(s) for s in sources]
    if averager in ("lawa", "ema") and len(trajs) != 1:
        raise ConfigError(f"{averager} averages along one trajectory; name exactly one source")
    if averager == "lawa":
        jobs = plan_lawa(trajs[0], window, stride, runs)
    elif averager == "ema":
        jobs = plan_ema(trajs[0], beta, runs)
    elif averager == "soup":
        jobs = plan_soup(trajs)
    else:
        jobs = [_greedy_job(trajs, eval_config or {}, allow_pickle)]
    made = [_run_job(j, out, allow_pickle) for j in tqdm(jobs, desc=averager, disable=not progress, unit="ckpt")]
    base = trajs[0]
    originals = [c for t in trajs for c in t]
    runs_meta = dict(base.runs)
    for j in jobs:
        runs_meta.setdefault(j.run, {"averaged": j.params, "parent": j.like.run})
    traj = Trajectory(name=f"{base.name}-{averager}", checkpoints=originals + made, runs=runs_meta, data=base.data,
                      source=str(out))
    traj.save(out / "trajectory.json")
    return traj


def _greedy_job(trajs: list[Trajectory], eval_config: dict, allow_pickle: bool) -> AverageJob:
    """Greedy soup with held-out loss on the evaluation blocks the sweep would use."""
    from ..config import EvalConfig, parse_config
    from ..data.tokenizer import load_tokenizer
    from ..evaluate import evaluate_loss
    from ..models import load_checkpoint
    from ..sweeps.evalset import build_eval_set, checkpoint_data_config, tokenizer_fingerprint
    from .stream import weighted_mean as wmean

    ing = ingredients(trajs)
    if len(ing) < 2:
        raise ConfigError(f"a greedy soup needs at least 2 ingredients; got {len(ing)}")
    paths = [resolve_checkpoint(c, allow_pickle) for c in ing]
    ecfg = parse_config(EvalConfig, eval_config, "eval settings")
    es = build_eval_set(ecfg, checkpoint_data_config(paths[0]), load_tokenizer(paths[0]), tokenizer_fingerprint(paths[0]))
    model = load_checkpoint(paths[0], allow_pickle=allow_pickle)

    def loss_of(tensors) -> float:
        model.load_state_dict(tensors, strict=False)
        return evaluate_loss(model, es.blocks, ecfg.batch_size).loss

    singles = [loss_of(wmean([p], [1.0])) for p in paths]
    kept, log = greedy_soup(paths, lambda ps: loss_of(wmean(ps, [1 / len(ps)] * len(ps))), singles)
    chosen = [ing[i] for i in kept]
    return AverageJob("greedy-soup", max(c.step for c in chosen), chosen, [1 / len(chosen)] * len(chosen), chosen[0],
                      {"averager": "greedy-soup", "ingredients": len(ing), "log": log,
                       "eval": {"n_blocks": ecfg.n_blocks, "split": ecfg.split}})
