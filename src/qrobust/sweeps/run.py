"""Run a sweep: for each checkpoint, load once, evaluate FP once, then quantize + evaluate every variant.

This is the local executor. The plan is grouped per checkpoint so the expensive, shared work (load, FP
loss, calibration) happens once per checkpoint whatever the number of variants, and a checkpoint whose
records all exist is never loaded at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..config import DataConfig, SweepConfig, parse_config
from ..data.tokenizer import load_tokenizer
from ..errors import CheckpointError, ConfigError
from ..evaluate import degradation, evaluate_loss
from ..geometry.measure import measure
from ..stats import dq_interval
from ..models import check_vocab, load_checkpoint, resolve_device, weight_safetensors
from ..quant import CalibrationSet, QuantSpec, get_quantizer, quantized
from ..averaging.averagers import AverageJob
from ..averaging.run import folder_of, is_made, make, plan_for_sweep
from ..sources import load_source, missing_line, not_cached, resolve_checkpoint
from ..trajectory import Checkpoint, Trajectory
from ..data.evalset import (EvalSet, build_calibration, build_eval_set, checkpoint_data_config, default_calibration_length,
                      file_fingerprint, has_training_data,
                      tokenizer_fingerprint)
from .claims import Claim, worker_id
from ..results.store import Store, record_key


@dataclass
class SweepSummary:
    out: Path
    checkpoints: int = 0
    records_written: int = 0
    records_skipped: int = 0
    model_loads: int = 0
    fp_evals: int = 0
    geometry: int = 0  # checkpoints whose loss geometry this worker measured
    task_evals: int = 0  # (checkpoint, variant) downstream-task evaluations this worker ran
    averaged: int = 0  # averaged checkpoints this worker made (sweeps with an 'average' list)
    claimed_elsewhere: int = 0  # checkpoint groups another worker held when this one reached them
    lost_claims: int = 0  # groups this worker stopped because its claim went stale and was taken over
    left_groups: int = 0  # groups still held by live workers when this one gave up waiting (re-run to finish)
    left_records: int = 0  # quantization records missing in those groups
    seconds: float = 0.0
    new_keys: list[str] = field(default_factory=list)


def variants(cfg: SweepConfig) -> list[QuantSpec]:
    specs = [QuantSpec(method=m, bits=b, group_size=g, sym=cfg.sym, include=tuple(cfg.include),
                       exclude=tuple(cfg.exclude), options=tuple(sorted(opts.items())))
             for m, opts in cfg.method_specs() for b in cfg.bits for g in cfg.group_sizes]
    for s in specs:
        get_quantizer(s.method).check_options(dict(s.options))
    return specs


def sweep_trajectory(cfg: SweepConfig) -> tuple[Trajectory, dict[str, AverageJob]]:
    """The swept trajectory: the source, plus the averaged checkpoints of ``cfg.average`` (folder -> job).

    Averaged checkpoints live in ``OUT/averaged`` and are made lazily, by the worker that claims them.
    What would stop the sweep part-way (checkpoints without a training corpus and no corpus named, hub
    revisions missing from the offline cache) is refused here, before any checkpoint is loaded."""
    traj = load_source(cfg.trajectory)
    pending: dict[str, AverageJob] = {}
    if cfg.average:
        traj, pending = plan_for_sweep(traj, cfg.average, averaged_dir(cfg))
    originals = [c for c in traj if c.path not in pending]  # averaged ones are made from these
    _check_corpora(cfg, traj, originals)
    missing = not_cached(originals)
    if missing:
        raise CheckpointError(missing_line(missing, len(originals)))
    return traj, pending


def _missing_corpora(cfg: SweepConfig) -> list[str]:
    """The corpus keys a checkpoint without training data needs and the sweep config leaves unset."""
    calibrated = sorted({m for m, _ in cfg.method_specs() if get_quantizer(m).needs_calibration})
    out = [] if cfg.eval.corpus else ["eval.corpus"]
    if calibrated and not cfg.calibration.corpus:
        out.append(f"calibration.corpus ({', '.join(calibrated)} calibrate{'s' if len(calibrated) == 1 else ''})")
    if cfg.geometry is not None and not cfg.geometry.corpus:
        out.append("geometry.corpus")
    return out


def _no_corpus(traj: Trajectory, missing: list[str]) -> ConfigError:
    what = (f"open-model preset '{traj.name}' ({traj.preset})" if traj.preset else
            f"trajectory '{traj.source or traj.name}' (checkpoints without qrobust training data)")
    return ConfigError(f"the {what} has no training corpus to evaluate or calibrate on: set "
                       f"{', '.join(missing)} in the sweep config (a corpus spec, e.g. text:PATH or hf:NAME)")


def _check_corpora(cfg: SweepConfig, traj: Trajectory, originals: list[Checkpoint]) -> None:
    """Eval, calibration and geometry sets default to the training corpus; a preset, hub repo or folder
    of foreign checkpoints has none, so the sweep needs them named (checked from files, nothing loaded)."""
    missing = _missing_corpora(cfg)
    if not missing or traj.data:
        return
    if traj.preset or any(has_training_data(c) is False for c in originals):
        raise _no_corpus(traj, missing)


def averaged_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.out) / "averaged"


def _data_config(cfg: SweepConfig, traj: Trajectory, ck: Checkpoint) -> DataConfig | None:
    """The training data config: from the trajectory manifest, else from the checkpoint's own state. None
    (no training corpus) only when the sweep names every corpus it needs: a Hub revision fetched only now,
    or an averaged checkpoint, is refused here, before it is loaded, rather than evaluated on a default."""
    if traj.data:
        return parse_config(DataConfig, traj.data, f"'data' in the manifest of {traj.source}")
    data = checkpoint_data_config(ck.path)
    missing = _missing_corpora(cfg) if data is None else []
    if missing:
        raise _no_corpus(traj, missing)
    return data


def _ck_identity(ck: Checkpoint, dtype: str = "float32") -> dict[str, Any]:
    """What identifies a checkpoint's numbers: its weights, and the dtype it runs in when not float32."""
    weights = weight_safetensors(Path(ck.path)) or sorted(Path(ck.path).glob("*.bin"))
    ident = {"name": ck.name, "step": ck.step, "weights": file_fingerprint(weights) if weights else ck.path}
    if dtype != "float32":
        ident["dtype"] = dtype
    return ident


class _Sets:
    """Evaluation / calibration sets cached per tokenizer: checkpoints of one run share them."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.evals: dict[str, EvalSet] = {}
        self.geos: dict[str, EvalSet] = {}
        self.calibs: dict[str, tuple[torch.Tensor, dict]] = {}

    @staticmethod
    def _k(data_cfg: DataConfig | None, tok_fp: str) -> str:
        return f"{tok_fp}:{data_cfg.model_dump_json() if data_cfg else ''}"

    def known_id(self, data_cfg: DataConfig | None, tok_fp: str, geometry: bool = False) -> str | None:
        """The id of an eval (or geometry) block set already built for this tokenizer: no tokenizer load."""
        es = (self.geos if geometry else self.evals).get(self._k(data_cfg, tok_fp))
        return es.id if es else None

    def eval_set(self, data_cfg: DataConfig | None, tok, tok_fp: str) -> EvalSet:
        k = self._k(data_cfg, tok_fp)
        if k not in self.evals:
            self.evals[k] = build_eval_set(self.cfg.eval, data_cfg, tok, tok_fp)
        return self.evals[k]

    def geometry_set(self, data_cfg: DataConfig | None, tok, tok_fp: str) -> EvalSet | None:
        """The (smaller) block set curvature is measured on; None when the sweep measures no geometry."""
        if self.cfg.geometry is None:
            return None
        k = self._k(data_cfg, tok_fp)
        if k not in self.geos:
            self.geos[k] = build_eval_set(self.cfg.geometry.eval_config(), data_cfg, tok, tok_fp)
        return self.geos[k]

    def calibration(self, data_cfg: DataConfig | None, tok, tok_fp: str, seq_len: int) -> tuple[torch.Tensor, dict]:
        k = (self._k(data_cfg, tok_fp), seq_len)
        if k not in self.calibs:
            self.calibs[k] = build_calibration(self.cfg.calibration, data_cfg, tok, tok_fp, seq_len)
        return self.calibs[k]


def _calib_identity(cfg: SweepConfig, spec: QuantSpec) -> dict[str, Any] | None:
    if not get_quantizer(spec.method).needs_calibration:
        return None
    return cfg.calibration.model_dump()


def sweep(config: SweepConfig | dict[str, Any], progress: bool = True, array_index: int | None = None,
          array_count: int | None = None, only: list[int] | None = None) -> SweepSummary:
    """Quantize and evaluate every checkpoint of a trajectory for every variant; resumable.

    Several workers may run on one results folder at once: each checkpoint group is claimed first
    (``claims.py``). ``array_index`` / ``array_count`` give this worker every ``array_count``-th
    checkpoint starting at ``array_index`` (job arrays); ``only`` restricts it to those checkpoint
    indices (one executor task per checkpoint)."""
    cfg = config if isinstance(config, SweepConfig) else parse_config(SweepConfig, config, "sweep config")
    if array_count is not None or array_index is not None:
        if array_count is None or array_index is None or array_count < 1 or not 0 <= array_index < array_count:
            raise ConfigError(f"job array needs 0 <= index < count, got index {array_index}, count {array_count}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    specs = variants(cfg)  # bad methods / options fail before anything is loaded or written
    if cfg.geometry is not None and cfg.dtype != "float32":
        raise ConfigError("loss geometry (Hessian-vector products) needs float32 models; drop 'geometry' or "
                          f"set dtype: float32 (got {cfg.dtype})")
    resolve_device(cfg.device)  # a GPU asked for on a machine without one fails here, once
    if cfg.stream:
        _check_stream(cfg, specs)
    if cfg.tasks is not None:
        from ..downstream.run import check_backend
        check_backend(cfg.tasks.backend)  # vLLM missing: one line before any checkpoint is loaded
    traj, pending = sweep_trajectory(cfg)
    store = Store(cfg.out)
    store.save_trajectory(traj)
    store.save_config(cfg.model_dump(exclude={"threads"}))
    sets = _Sets(cfg)
    summary = SweepSummary(out=Path(cfg.out), checkpoints=len(traj))
    mine = [c for i, c in enumerate(traj) if (array_count is None or i % array_count == array_index)
            and (only is None or i in only)]
    overall = tqdm(total=len(mine) * len(specs), desc="sweep", disable=not progress, unit="job")
    store.clean()  # temporary files of killed writers (never those of a live worker): see leftovers.py
    worker = worker_id()
    groups: dict[int, _Group] = {}
    held: dict[int, int] = {}  # group -> its variants not yet counted on the progress bar

    def visit(i: int) -> bool:
        """Checkpoint group ``i``: do what is missing; False when another worker holds it."""
        job = pending.get(mine[i].path)
        if job is not None and not _make_average(cfg, job, store, worker, summary):
            return False  # another worker is averaging it; it will sweep it too
        first = i not in groups
        g = groups[i] if not first else groups.setdefault(i, _group(cfg, traj, mine[i], specs, sets))
        todo = g.todo(store)
        if first:
            summary.records_skipped += len(specs) - len(todo)
            overall.update(len(specs) - len(todo))
        geo_key = g.geo_key if g.geo_key is not None and not store.has(g.geo_key, kind="geometry") else None
        if not todo and geo_key is None:
            overall.update(held.pop(i, 0))  # finished by the worker that held it
            return True
        claim = Claim(store.root, record_key({"checkpoint": g.ident}), worker, cfg.claim_ttl_s)
        if not claim.acquire():
            held.setdefault(i, len(todo))
            return False
        if i in held:  # taken over: the group's own progress counts from here
            overall.update(held.pop(i) - len(todo))
        lost = summary.lost_claims
        try:
            tok = g.tok or load_tokenizer(g.ck.path, cfg.trust_remote_code)
            g.tok = None
            if cfg.stream:  # geometry and tasks were refused up front
                _run_checkpoint_streamed(cfg, traj, g.ck, g.ident, g.data_cfg, tok, g.tok_fp, sets, store, todo,
                                         g.keys, summary, progress, overall)
            else:
                _run_checkpoint(cfg, traj, g.ck, g.ident, g.data_cfg, tok, g.tok_fp, sets, store, todo, g.keys,
                                summary, progress, overall, claim, geo_key, g.tkeys)
        finally:
            claim.release()
        return summary.lost_claims == lost  # a claim lost midway: the worker that took it over finishes it

    waiting = [i for i in range(len(mine)) if not visit(i)]
    summary.claimed_elsewhere = len(waiting)
    waiting = _wait_for_others(cfg, waiting, visit)
    for i in waiting:
        summary.left_groups += 1
        summary.left_records += len(groups[i].todo(store)) if i in groups else len(specs)
    overall.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


@dataclass
class _Group:
    """What identifies one checkpoint group's work, computed once (the weights are fingerprinted once)."""
    ck: Checkpoint
    ident: dict[str, Any]
    data_cfg: DataConfig | None
    tok_fp: str
    tok: Any
    keys: dict[QuantSpec, str]
    tkeys: dict[QuantSpec, str]
    geo_key: str | None

    def todo(self, store: Store) -> list[QuantSpec]:
        """The variants whose record (or task record) is missing or not a valid record."""
        return [s for s in self.keys if not store.has(self.keys[s])
                or (self.tkeys and not store.has(self.tkeys[s], kind="tasks"))]


def _group(cfg: SweepConfig, traj: Trajectory, listed: Checkpoint, specs: list[QuantSpec], sets: _Sets) -> _Group:
    # a hub revision is fetched (or found in the HF cache) here, when it is needed; records keep its
    # repo and revision, with the local snapshot folder as its path
    ck = replace(listed, path=str(resolve_checkpoint(listed, cfg.allow_pickle)))
    ident = _ck_identity(ck, cfg.dtype)
    data_cfg = _data_config(cfg, traj, ck)
    tok_fp = tokenizer_fingerprint(ck.path)
    # record keys include the eval-set id, which depends on the tokenizer: build the set once per
    # tokenizer (cached), then decide from the keys whether this checkpoint needs loading at all.
    tok = None
    es_id = sets.known_id(data_cfg, tok_fp)
    if es_id is None:
        tok = load_tokenizer(ck.path, cfg.trust_remote_code)
        es_id = sets.eval_set(data_cfg, tok, tok_fp).id
    keys = {spec: record_key({"checkpoint": ident, "variant": spec.to_dict(),
                              "calibration": _calib_identity(cfg, spec), "eval": es_id}) for spec in specs}
    tkeys = ({spec: record_key({"checkpoint": ident, "variant": spec.to_dict(),
                                "calibration": _calib_identity(cfg, spec), "tasks": cfg.tasks.identity()})
              for spec in specs} if cfg.tasks is not None else {})
    geo_key = None
    if cfg.geometry is not None:
        gs_id = sets.known_id(data_cfg, tok_fp, geometry=True)
        if gs_id is None:
            tok = tok or load_tokenizer(ck.path, cfg.trust_remote_code)
            gs_id = sets.geometry_set(data_cfg, tok, tok_fp).id
        geo_key = record_key({"checkpoint": ident, "geometry": cfg.geometry.model_dump(), "eval": gs_id})
    return _Group(ck, ident, data_cfg, tok_fp, tok, keys, tkeys, geo_key)


def _wait_for_others(cfg: SweepConfig, waiting: list[int], visit: Callable[[int], bool]) -> list[int]:
    """Revisit the groups other workers held: take over those whose holder died (at once on this host,
    after ``claim_ttl_s`` elsewhere), count those finished meanwhile, and wait for the rest while they
    progress, giving up after ``claim_ttl_s`` without progress; returns the groups still left."""
    poll = min(max(cfg.claim_ttl_s / 20, 0.05), 5.0)
    patience = cfg.claim_ttl_s + 2 * poll  # a holder on another host that died just now goes stale within it
    deadline = time.monotonic() + patience
    while waiting:
        still = [i for i in waiting if not visit(i)]
        if len(still) < len(waiting):
            deadline = time.monotonic() + patience
        waiting = still
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return waiting


def _make_average(cfg: SweepConfig, job: AverageJob, store: Store, worker: str, summary: SweepSummary) -> bool:
    """Make an averaged checkpoint under a claim (made already: nothing to do); False if claimed elsewhere."""
    out = averaged_dir(cfg)
    if is_made(job, out, cfg.eval):
        return True
    claim = Claim(store.root, record_key({"average": str(folder_of(job, out))}), worker, cfg.claim_ttl_s)
    if not claim.acquire():
        return False
    try:
        make(job, out, cfg.eval, cfg.allow_pickle, cfg.trust_remote_code)
        summary.averaged += 1
    finally:
        claim.release()
    return True


def _run_checkpoint(cfg: SweepConfig, traj: Trajectory, ck: Checkpoint, ident: dict[str, Any],
                    data_cfg: DataConfig | None, tok, tok_fp: str, sets: _Sets, store: Store, todo: list[QuantSpec],
                    keys: dict[QuantSpec, str], summary: SweepSummary, progress: bool, bar: tqdm,
                    claim: Claim | None = None, geo_key: str | None = None,
                    tkeys: dict[QuantSpec, str] | None = None) -> None:
    """One checkpoint group: load once, FP loss once (or from the store), then every missing variant."""
    es = sets.eval_set(data_cfg, tok, tok_fp)
    t0 = time.perf_counter()
    model = load_checkpoint(ck.path, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                            dtype=cfg.dtype, device=cfg.device)
    check_vocab(model, tok, ck.path)
    _check_lengths(cfg, model.config, ck, es, todo, data_cfg)
    load_s = time.perf_counter() - t0
    summary.model_loads += 1
    fp_key = record_key({"checkpoint": ident, "eval": es.id})
    fp = store.get(fp_key, kind="fp")
    if fp is None:
        r = evaluate_loss(model, es.blocks, cfg.eval.batch_size, progress, desc=f"FP {ck.name}",
                          name=f"checkpoint {ck.name} ('{ck.path}')")
        summary.fp_evals += 1
        fp = _fp_record(ck, es, r)
        store.put(fp_key, fp, kind="fp")
    if geo_key is not None and not store.has(geo_key, kind="geometry"):
        gs = sets.geometry_set(data_cfg, tok, tok_fp)
        t0 = time.perf_counter()
        geo = measure(model, gs.blocks, cfg.geometry)
        store.put(geo_key, {"trajectory": traj.name, "checkpoint": ck.to_dict(), "checkpoint_id": ident,
                            "eval_set": {"id": gs.id, **gs.info}, "geometry": geo,
                            "seconds": time.perf_counter() - t0}, kind="geometry")
        summary.geometry += 1
    shared: CalibrationSet | None = None  # this checkpoint's calibration, and what its variants share
    tasks = _TaskRunner(cfg, ck, ident, traj.name, model, tok, store) if tkeys else None
    for spec in todo:
        if claim is not None and not claim.held():  # stalled past the claim's ttl: another worker has it
            summary.lost_claims += 1
            return
        need_rec = not store.has(keys[spec])  # either may have been written meanwhile by a worker that
        need_tasks = bool(tkeys) and not store.has(tkeys[spec], kind="tasks")  # took over a stale claim
        if not need_rec and not need_tasks:
            bar.update(1)
            continue
        calib, calib_info = None, None
        if get_quantizer(spec.method).needs_calibration:
            tokens, calib_info = sets.calibration(data_cfg, tok, tok_fp,
                                                  default_calibration_length(data_cfg, model.config))
            if shared is None or shared.tokens is not tokens:
                shared = CalibrationSet(tokens)
            calib = shared
        if need_tasks:
            tasks.fp()  # before quantizing: the FP accuracy comes from the FP model
        with quantized(model, spec, calib) as qr:
            if need_rec:
                rq = evaluate_loss(model, es.blocks, cfg.eval.batch_size, progress, desc=f"{spec.label} {ck.name}",
                                   name=f"checkpoint {ck.name} ('{ck.path}') quantized as {spec.label}")
            if need_tasks:
                tasks.quantized(spec, tkeys[spec])
                summary.task_evals += 1
        if not need_rec:
            bar.update(1)
            continue
        rec = _variant_record(traj, ck, ident, spec, calib_info, es, fp, rq, qr.summary(), qr.layers,
                              {"load_s": load_s, "fp_eval_s": fp["seconds"], "quantize_s": qr.seconds,
                               "eval_s": rq.seconds}, str(next(model.parameters()).device), cfg.dtype)
        store.put(keys[spec], rec)
        summary.records_written += 1
        summary.new_keys.append(keys[spec])
        bar.update(1)


def _check_lengths(cfg: SweepConfig, model_config: Any, ck: Checkpoint, es: EvalSet, todo: list[QuantSpec],
                   data_cfg: DataConfig | None) -> None:
    """eval.seq_len and the calibration length must fit the model's positions: refused before any work."""
    from ..checks import check_seq_len
    check_seq_len(model_config, es.blocks.shape[1], ck.path, "eval.seq_len", "eval.seq_len")
    if any(get_quantizer(s.method).needs_calibration for s in todo):
        n = cfg.calibration.seq_len or default_calibration_length(data_cfg, model_config)
        check_seq_len(model_config, n, ck.path, "calibration.seq_len", "calibration.seq_len")


def _fp_record(ck: Checkpoint, es: EvalSet, r) -> dict[str, Any]:
    return {"checkpoint": ck.to_dict(), "eval_set": {"id": es.id, **es.info}, "loss": r.loss, "n_tokens": r.n_tokens,
            "block_nll": r.block_sums, "seconds": r.seconds}


def _variant_record(traj: Trajectory, ck: Checkpoint, ident: dict[str, Any], spec: QuantSpec,
                    calib_info: dict[str, Any] | None, es: EvalSet, fp: dict[str, Any], rq, weight_summary: dict,
                    layers: dict, timings: dict[str, float], device: str, dtype: str) -> dict[str, Any]:
    """One variant's record: ΔQ L with its paired-bootstrap interval, weight errors, per-block NLLs."""
    return {
        "trajectory": traj.name, "checkpoint": ck.to_dict(), "checkpoint_id": ident,
        "variant": {**spec.to_dict(), "label": spec.label}, "calibration": calib_info,
        "eval_set": {"id": es.id, **es.info},
        "metrics": {**degradation(fp["loss"], rq.loss), "dq_ci": dq_interval(fp["block_nll"], rq.block_sums)},
        "weight_error": weight_summary, "layers": layers,
        "blocks": {"nll_fp": fp["block_nll"], "nll_q": rq.block_sums, "tokens_per_block": rq.tokens_per_block},
        "timings": timings, "device": device, "dtype": dtype,
    }


def _check_stream(cfg: SweepConfig, specs: list[QuantSpec]) -> None:
    """What a streamed sweep cannot do, refused before any work."""
    from ..quant.pipelines.streamed import check_streamable
    if cfg.geometry is not None or cfg.tasks is not None:
        raise ConfigError("stream: true evaluates losses block by block; loss geometry and downstream tasks need "
                          "the whole model: drop 'geometry' / 'tasks' or set stream: false")
    check_streamable(specs)


def _run_checkpoint_streamed(cfg: SweepConfig, traj: Trajectory, ck: Checkpoint, ident: dict[str, Any],
                             data_cfg: DataConfig | None, tok, tok_fp: str, sets: _Sets, store: Store,
                             todo: list[QuantSpec], keys: dict[QuantSpec, str], summary: SweepSummary, progress: bool,
                             bar: tqdm) -> None:
    """One checkpoint, layer-streamed: FP (unless stored) and every missing variant in one pass over the
    blocks, each block read from the files; records identical to the in-memory path's."""
    from ..quant.pipelines.streamed import stream_checkpoint
    from ..models import read_model_config
    es = sets.eval_set(data_cfg, tok, tok_fp)
    config = read_model_config(ck.path)
    check_vocab(config, tok, ck.path)
    fp_key = record_key({"checkpoint": ident, "eval": es.id})
    fp = store.get(fp_key, kind="fp")
    todo = [s for s in todo if not store.has(keys[s])]
    _check_lengths(cfg, config, ck, es, todo, data_cfg)
    calibs, infos = {}, {}
    for spec in todo:
        if get_quantizer(spec.method).needs_calibration:
            calibs[spec], infos[spec] = sets.calibration(data_cfg, tok, tok_fp,
                                                         default_calibration_length(data_cfg, config))
    run = stream_checkpoint(ck.path, todo, es.blocks, cfg.eval.batch_size, calibs, fp=fp is None, device=cfg.device,
                            dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, progress=progress,
                            states=cfg.states, states_dir=Path(cfg.states_dir) if cfg.states_dir else None)
    summary.model_loads += 1  # one streamed pass: every block read once per variant, the model never whole
    if fp is None:
        assert run.fp is not None
        fp = _fp_record(ck, es, run.fp)
        store.put(fp_key, fp, kind="fp")
        summary.fp_evals += 1
    # the records are written even if the claim lapsed meanwhile: a worker that took over computes the
    # same numbers under the same keys, and the writes are atomic
    device = str(resolve_device(cfg.device))
    streamed = {"states": run.tier, "seconds": run.seconds, "block_seconds": run.block_seconds}
    for v in run.variants:
        timings = {"fp_eval_s": fp["seconds"], "quantize_s": v.quantize_seconds, "eval_s": v.eval_seconds}
        rec = _variant_record(traj, ck, ident, v.spec, infos.get(v.spec), es, fp, v.q, v.summary(), v.layers,
                              timings, device, cfg.dtype)
        store.put(keys[v.spec], {**rec, "streamed": streamed})
        summary.records_written += 1
        summary.new_keys.append(keys[v.spec])
        bar.update(1)


class _TaskRunner:
    """Downstream tasks of one checkpoint group: FP accuracy once (stored), then per quantized variant."""

    def __init__(self, cfg: SweepConfig, ck: Checkpoint, ident: dict[str, Any], traj_name: str, model, tok,
                 store: Store):
        self.cfg, self.ck, self.ident, self.traj, self.model, self.tok, self.store = (
            cfg, ck, ident, traj_name, model, tok, store)
        self.fp_key = record_key({"checkpoint": ident, "tasks": cfg.tasks.identity()})
        self._fp: dict[str, Any] | None = None
        self._names: tuple[list[str], Path] | None = None

    def _run(self) -> dict[str, Any]:
        from ..downstream.run import evaluate_tasks
        from ..downstream.tasks import context_fits, held_out_documents, model_context, resolve_tasks
        t = self.cfg.tasks
        if self._names is None:
            ctx = model_context(self.model)
            # one folder per (task specs, training data): checkpoints of a run share generated tasks and
            # lm-eval's task index
            data = checkpoint_data_config(self.ck.path)
            work = self.store.root / "tasks_work" / record_key({"tasks": t.names, "context": ctx,
                                                                "data": data.model_dump() if data else None})
            self._names = resolve_tasks(t.names, work, held_out_documents(Path(self.ck.path)),
                                        context_fits(self.tok, ctx))
        return evaluate_tasks(self.model, self.tok, *self._names, num_fewshot=t.num_fewshot, limit=t.limit,
                              batch_size=t.batch_size, seed=t.seed, backend=t.backend,
                              trust_remote_code=self.cfg.trust_remote_code)

    def fp(self) -> dict[str, Any]:
        if self._fp is None:
            got = self.store.get(self.fp_key, kind="tasks_fp")
            if got is None:
                got = {"checkpoint": self.ck.to_dict(), "tasks": self._run()}
                self.store.put(self.fp_key, got, kind="tasks_fp")
            self._fp = got
        return self._fp["tasks"]

    def quantized(self, spec: QuantSpec, key: str) -> None:
        from ..downstream.run import accuracy_drop
        fp = self.fp()
        q = self._run()
        self.store.put(key, {"trajectory": self.traj, "checkpoint": self.ck.to_dict(), "checkpoint_id": self.ident,
                             "variant": {**spec.to_dict(), "label": spec.label},
                             "tasks_config": self.cfg.tasks.model_dump(), "fp": fp, "q": q,
                             "drop": accuracy_drop(fp, q)}, kind="tasks")
