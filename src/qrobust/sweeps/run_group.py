"""Run one checkpoint group (a planned :class:`~.plan.Job`): load once → FP loss once (or from the store) →
geometry → calibration once → every missing variant (quantize a copy, evaluate, record), in memory or
layer-streamed. Keys come from the plan; records are built by the typed record classes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..evaluate import LossResult, degradation, evaluate_loss
from ..geometry.measure import measure
from ..models import check_vocab, load_checkpoint, read_model_config, resolve_device
from ..quant import CalibrationSet, QuantSpec, get_quantizer, needs_calibration, quantized, select_linears
from ..quant.pipelines.in_memory import check_layers
from ..quant.pipelines.streamed import stream_checkpoint
from ..data.evalset import EvalSet, default_calibration_length
from ..results.records import FPRecord, GeometryRecord, Outcome, RunInfo, VariantRecord
from ..stats import dq_interval
from .claims import Claim
from .context import Context
from .plan import Job
from .prepare import check_lengths
from .tasks import TaskRunner


def outcome(fp: FPRecord, q: LossResult, weight_error: dict[str, Any], layers: dict[str, Any],
            calibration: dict[str, Any] | None) -> Outcome:
    """ΔQ L of ``q`` against the FP loss, with its paired-bootstrap interval over the blocks."""
    return Outcome(metrics={**degradation(fp.loss, q.loss), "dq_ci": dq_interval(fp.block_nll, q.block_sums)},
                   blocks={"nll_fp": fp.block_nll, "nll_q": q.block_sums, "tokens_per_block": q.tokens_per_block},
                   weight_error=weight_error, layers=layers, calibration=calibration)


def stored_fp(ctx: Context, job: Job) -> FPRecord | None:
    got = ctx.store.get(job.keys.fp, kind="fp")
    return got if isinstance(got, FPRecord) else None


def run_group(job: Job, ctx: Context, todo: list[QuantSpec], claim: Claim | None = None) -> None:
    """Do what is missing of group ``job`` (``todo``: its variants without a record)."""
    tok = job.tokenizer(ctx.cfg.trust_remote_code)
    if ctx.cfg.stream:  # geometry and tasks were refused up front
        run_streamed(job, ctx, tok, todo)
    else:
        InMemoryGroup(job, ctx, tok).run(todo, claim)


class InMemoryGroup:
    """One checkpoint group with the whole model in memory."""

    model: Any  # set by load()
    load_s: float
    fp: FPRecord
    tasks: TaskRunner | None

    def __init__(self, job: Job, ctx: Context, tok: Any):
        self.job, self.ctx, self.tok = job, ctx, tok
        self.es: EvalSet = ctx.sets.eval_set(job.data_cfg, tok, job.tok_fp)
        self.shared: CalibrationSet | None = None  # this checkpoint's calibration, and what its variants share

    def run(self, todo: list[QuantSpec], claim: Claim | None) -> None:
        ctx, job = self.ctx, self.job
        self.load(todo)
        self.fp = self.fp_loss()
        if job.needs_geometry(ctx.store):
            self.geometry()
        self.tasks = TaskRunner(job, ctx, self.model, self.tok) if job.keys.tasks else None
        for spec in todo:
            if claim is not None and not claim.held():  # stalled past the claim's ttl: another worker has it
                ctx.summary.lost_claims += 1
                return
            self.variant(spec)

    def load(self, todo: list[QuantSpec]) -> None:
        cfg, ck = self.ctx.cfg, self.job.ck
        t0 = time.perf_counter()
        self.model = load_checkpoint(ck.path, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                                     dtype=cfg.dtype, device=cfg.device)
        check_vocab(self.model, self.tok, ck.path)
        check_lengths(cfg, self.model.config, ck, self.es, todo, self.job.data_cfg)
        for spec in todo:  # a format that does not fit a layer: refused before the FP evaluation
            check_layers(spec, select_linears(self.model, spec.include, spec.exclude, required=False))
        self.load_s = time.perf_counter() - t0
        self.ctx.summary.model_loads += 1
        self.ctx.summary.add_phase("load", self.load_s)

    def fp_loss(self) -> FPRecord:
        fp = stored_fp(self.ctx, self.job)
        if fp is None:
            ck = self.job.ck
            r = evaluate_loss(self.model, self.es.blocks, self.ctx.cfg.eval.batch_size, self.ctx.progress,
                              desc=f"FP {ck.name}", name=f"checkpoint {ck.name} ('{ck.path}')")
            self.ctx.summary.fp_evals += 1
            self.ctx.summary.add_phase("fp_eval", r.seconds)
            fp = FPRecord.new(self.job.keys.fp, ck, self.es, r)
            self.ctx.store.put(fp)
        return fp

    def geometry(self) -> None:
        ctx, job = self.ctx, self.job
        gs = ctx.sets.geometry_set(job.data_cfg, self.tok, job.tok_fp)
        t0 = time.perf_counter()
        geo = measure(self.model, gs.blocks, ctx.cfg.geometry)
        ctx.store.put(GeometryRecord.new(job.keys.geometry, job.subject(ctx.traj.name), gs, geo,
                                         time.perf_counter() - t0))
        ctx.summary.geometry += 1

    def calibration(self, spec: QuantSpec) -> tuple[CalibrationSet | None, dict[str, Any] | None, float]:
        """The calibration set ``spec`` needs (built once per tokenizer, shared by the group's variants), and
        the seconds it took to get it (about 0 when it was built before)."""
        if not needs_calibration(spec):
            return None, None, 0.0
        job = self.job
        t0 = time.perf_counter()
        tokens, info = self.ctx.sets.calibration(job.data_cfg, self.tok, job.tok_fp,
                                                 default_calibration_length(job.data_cfg, self.model.config))
        if self.shared is None or self.shared.tokens is not tokens:
            self.shared = CalibrationSet(tokens)
        return self.shared, info, time.perf_counter() - t0

    def variant(self, spec: QuantSpec) -> None:
        ctx, job, ck = self.ctx, self.job, self.job.ck
        need_rec = not ctx.store.has(job.keys.variants[spec])  # either may have been written meanwhile by a
        need_tasks = bool(job.keys.tasks) and not ctx.store.has(job.keys.tasks[spec], kind="tasks")  # takeover
        if not need_rec and not need_tasks:
            ctx.bar.update(1)
            return
        calib, calib_info, calib_tokens_s = self.calibration(spec)
        if need_tasks:
            self.tasks.fp()  # before quantizing: the FP accuracy comes from the FP model
        with quantized(self.model, spec, calib) as qr:
            if need_rec:
                rq = evaluate_loss(self.model, self.es.blocks, ctx.cfg.eval.batch_size, ctx.progress,
                                   desc=f"{spec.label} {ck.name}",
                                   name=f"checkpoint {ck.name} ('{ck.path}') quantized as {spec.label}")
            if need_tasks:
                self.tasks.quantized(spec)
                ctx.summary.task_evals += 1
        if not need_rec:
            ctx.bar.update(1)
            return
        timings = {"load_s": self.load_s, "fp_eval_s": self.fp.seconds, "calib_tokens_s": calib_tokens_s,
                   "calibration_s": qr.calibration_seconds, "quantize_s": qr.seconds, "eval_s": rq.seconds}
        run = RunInfo(timings, str(next(self.model.parameters()).device), ctx.cfg.dtype)
        ctx.summary.add_variant(spec.label, timings)
        key = job.keys.variants[spec]
        ctx.store.put(VariantRecord.new(key, job.subject(ctx.traj.name), spec, self.es,
                                        outcome(self.fp, rq, qr.summary(), qr.layers, calib_info), run))
        ctx.wrote(key)


def run_streamed(job: Job, ctx: Context, tok: Any, todo: list[QuantSpec]) -> None:
    """One checkpoint, layer-streamed: FP (unless stored) and every missing variant in one pass over the
    blocks, each block read from the files; records identical to the in-memory path's."""
    cfg, ck, store = ctx.cfg, job.ck, ctx.store
    es = ctx.sets.eval_set(job.data_cfg, tok, job.tok_fp)
    config = read_model_config(ck.path)
    check_vocab(config, tok, ck.path)
    fp = stored_fp(ctx, job)
    todo = [s for s in todo if not store.has(job.keys.variants[s])]
    check_lengths(cfg, config, ck, es, todo, job.data_cfg)
    calibs, infos, tokens_s = {}, {}, {}
    for spec in todo:
        if needs_calibration(spec):
            t0 = time.perf_counter()
            calibs[spec], infos[spec] = ctx.sets.calibration(job.data_cfg, tok, job.tok_fp,
                                                             default_calibration_length(job.data_cfg, config))
            tokens_s[spec] = time.perf_counter() - t0
    run = stream_checkpoint(ck.path, todo, es.blocks, cfg.eval.batch_size, calibs, fp=fp is None, device=cfg.device,
                            dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, progress=ctx.progress,
                            states=cfg.states, states_dir=Path(cfg.states_dir) if cfg.states_dir else None)
    ctx.summary.model_loads += 1  # one streamed pass: every block read once per variant, the model never whole
    ctx.summary.add_phase("load", run.load_seconds)
    if fp is None:
        assert run.fp is not None
        fp = FPRecord.new(job.keys.fp, ck, es, run.fp)
        store.put(fp)
        ctx.summary.fp_evals += 1
        ctx.summary.add_phase("fp_eval", run.fp.seconds)
    # the records are written even if the claim lapsed meanwhile: a worker that took over computes the
    # same numbers under the same keys, and the writes are atomic
    device = str(resolve_device(cfg.device))
    streamed = {"states": run.tier, "seconds": run.seconds, "block_seconds": run.block_seconds}
    for v in run.variants:
        timings = {"load_s": run.load_seconds, "fp_eval_s": fp.seconds, "calib_tokens_s": tokens_s.get(v.spec, 0.0),
                   "calibration_s": v.calibration_seconds, "quantize_s": v.quantize_seconds, "eval_s": v.eval_seconds}
        ctx.summary.add_variant(v.spec.label, timings)
        key = job.keys.variants[v.spec]
        store.put(VariantRecord.new(key, job.subject(ctx.traj.name), v.spec, es,
                                    outcome(fp, v.q, v.summary(), v.layers, infos.get(v.spec)),
                                    RunInfo(timings, device, cfg.dtype, streamed)))
        ctx.wrote(key)
