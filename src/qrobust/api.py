"""The public Python API: small functions over the workflows and floors below, each documented in the
README. It validates and dispatches; the work lives in ``workflows/`` (and lower), so the CLI and a Python
caller run the same code."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .averaging.run import AverageOptions
from .config import SweepConfig, TrainConfig, parse_config
from .data.checkpoint_blocks import calib_blocks, eval_blocks
from .data.shards import TokenShards, open_shards
from .evaluate import LossResult, degradation, evaluate_loss
from .models import load_checkpoint
from .config import MonitorConfig
from .monitor import Monitor, MonitorResult
from .monitor.predictors import PREDICTORS, compute_predictors
from .quant import QuantResult, QuantSpec, quantize, quantized
from .quant.pipelines.streamed import stream_checkpoint
from .sources import load_source as load_trajectory
from .results.compare import compare_dq
from .stats import dq_interval
from .sweeps.run import SweepSummary
from .trajectory import Trajectory
from .workflows import steps
from .workflows.checkpoint import quant_spec, quantize_checkpoint
from .workflows.evaluation import evaluate_checkpoint
from .workflows.options import (CalibrationOptions, EvalOptions, ExecutorOptions, ExportOptions, LandscapeOptions,
                                LoadOptions, StreamOptions, TaskOptions, split_options)

if TYPE_CHECKING:
    from .training.planning import TrainingPlan
    from .training.slurm import SlurmOptions


def train(config: TrainConfig | dict | str | Path | None = None, progress: bool = True,
          trust_remote_code: bool = False, nproc: int | None = None, torchrun_flags: list[str] | None = None,
          **kwargs: Any) -> Trajectory:
    """Train a run (+ cooldown branches) from a config object, dict or YAML path; keyword args override keys.
    ``trust_remote_code``: allow the Python code of a tokenizer folder named in ``data.tokenizer``.
    ``nproc``: train on that many processes (DDP, or FSDP2 with ``distributed="fsdp"``) through torchrun;
    ``torchrun_flags``: torchrun's ``--nnodes`` / ``--node-rank`` / ``--rdzv-*`` flags for several nodes.

    Returns the :class:`Trajectory` of every checkpoint written. Re-running resumes where it stopped.
    """
    return steps.train(config, progress=progress, trust_remote_code=trust_remote_code, nproc=nproc,
                       torchrun_flags=torchrun_flags, **kwargs)


def prepare_shards(corpus: str, out: str | Path, num_proc: int = 1, progress: bool = True,
                   trust_remote_code: bool = False, **options: Any) -> dict[str, Any]:
    """Tokenize a corpus spec into memory-mapped token shards in ``out`` (``qrobust data prepare``) and return
    the manifest; train from them with ``data.shards: OUT``.

    ``options``: ``field``, ``max_chars``, ``tokenizer`` ("bpe", "byte" or a folder), ``vocab_size``,
    ``tokenizer_chars``, ``val_fraction``, ``seed``, ``shard_tokens`` (defaults: the training data config's,
    so the same settings give the same token streams). Re-running resumes; a folder made with other
    settings is refused."""
    from .data.shard_format import shard_settings
    from .data.shard_writer import write_shards
    return write_shards(shard_settings(corpus, **options), out, num_proc=num_proc, progress=progress,
                        trust_remote_code=trust_remote_code)


def plan_training(config: TrainConfig | dict | str | Path, world_size: int = 1, mfu: float = 0.4,
                  trust_remote_code: bool = False, **kwargs: Any) -> TrainingPlan:
    """What training ``config`` on ``world_size`` devices will cost (steps, tokens, FLOPs per run, memory per
    device, GPU-hours at model FLOPs utilisation ``mfu``) without training or reading the corpus; keyword
    args override keys."""
    from .training.planning import plan_training as plan
    return plan(steps.validated(TrainConfig, config, kwargs, "train config"), world_size, mfu, trust_remote_code)


def train_slurm(config: str | Path, file: str | Path, options: SlurmOptions | None = None,
                out: str | None = None) -> Path:
    """Write an sbatch script to ``file`` that trains the YAML ``config`` with one torchrun per node
    (``options``: nodes, GPUs per node, time, partition, account). The config is checked first, including that
    its global batch divides over nodes × GPUs, so a script that would fail at start is never written."""
    from .training.planning import batching
    from .training.slurm import SlurmOptions, train_slurm_script, write_train_slurm
    options = options or SlurmOptions()
    cfg = steps.validated(TrainConfig, config, {"out": out} if out else {}, "train config")
    batching(cfg.batch_size, cfg.micro_batch_size, cfg.grad_accum, options.world_size)
    return write_train_slurm(file, train_slurm_script(config, cfg.name, options, out))


def sweep_config(config: SweepConfig | dict | str | Path, **kwargs: Any) -> SweepConfig:
    """The validated sweep config (a bad key, type or method option is one ConfigError)."""
    return steps.sweep_config(config, **kwargs)


def sweep(config: SweepConfig | dict | str | Path, progress: bool = True, *, options: ExecutorOptions | None = None,
          **kwargs: Any) -> SweepSummary:
    """Quantize + evaluate every checkpoint of a trajectory for every (method, bits, group size).

    Keywords naming :class:`ExecutorOptions` fields (or ``options=``) choose where it runs; the other
    keywords override config keys.
    ``array_index``/``array_count``: this worker's share of a job array (every count-th checkpoint);
    ``executor="ray"``: one Ray task per checkpoint (local Ray, or the cluster at ``ray_address``;
    ``cpus_per_task``, ``gpus_per_task``)."""
    where, overrides = split_options(ExecutorOptions, options, kwargs)
    cfg = steps.validated(SweepConfig, config, overrides, "sweep config")
    return steps.sweep_with(where.executor, cfg, where.run_options(progress))


def average(sources: str | dict | list, averager: str, out: str | Path, *, options: AverageOptions | None = None,
            **settings: Any) -> Trajectory:
    """Average checkpoints: ``lawa`` (window, stride) or ``ema`` (beta) along one trajectory, ``soup`` or
    ``greedy-soup`` over the last checkpoint of every run of the sources (or an averager registered with
    ``qrobust.averaging.register_averager``). Streams from safetensors; writes averaged checkpoints + a
    manifest (originals and averaged runs) to ``out``; returns that trajectory. ``settings``: ``window``,
    ``stride``, ``beta``, ``runs`` (what is averaged), ``eval`` (EvalConfig keys of a greedy soup's held-out
    set), ``progress``, ``allow_pickle``, ``trust_remote_code`` (or the typed ``options``)."""
    from .averaging import average as _average
    srcs = sources if isinstance(sources, list) else [sources]
    if "eval" in settings:
        settings["eval_config"] = settings.pop("eval")
    return _average(srcs, averager, out, options=options, **settings)


def sharpness(checkpoint: str | Path, allow_pickle: bool = False, trust_remote_code: bool = False,
             **settings: Any) -> dict[str, Any]:
    """Loss geometry of one checkpoint: Hessian λmax (Lanczos, with residuals), trace (Hutch++ with a
    95 % interval), optional per-layer λmax, weight statistics. ``settings`` are :class:`GeometryConfig`
    keys (top_k, iters, trace, trace_matvecs, params, per_layer, n_blocks, ...)."""
    from .config import GeometryConfig
    from .data.tokenizer import load_tokenizer
    from .geometry.measure import measure
    from .models import check_vocab, load_checkpoint
    from .data.evalset import build_eval_set, checkpoint_data_config, tokenizer_fingerprint

    cfg = parse_config(GeometryConfig, settings, "geometry settings")
    p = Path(checkpoint)
    model = load_checkpoint(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(p, trust_remote_code)
    check_vocab(model, tok, p)
    es = build_eval_set(cfg.eval_config(), checkpoint_data_config(p), tok, tokenizer_fingerprint(p))
    return {"checkpoint": str(p), "eval_set": {"id": es.id, **es.info}, **measure(model, es.blocks, cfg)}


def landscape(source: str | dict, out: str | Path, plane: str = "pca", **settings: Any) -> dict[str, Any]:
    """Trajectory PCA (exact, streamed) and a 2-D loss landscape in its plane (``plane="pca"``) or along
    two filter-normalised random directions (``"random"``); writes landscape.json and PNGs to ``out``.
    ``settings``: :class:`LandscapeOptions` fields (runs, grid, margin, span, center, n_blocks, seq_len,
    batch_size, params, seed, progress, allow_pickle, trust_remote_code), or ``options=LandscapeOptions(...)``."""
    from .workflows.landscape import trajectory_landscape
    return trajectory_landscape(source, out, plane=plane, **settings)


def reproduce(experiments: str | list[str], out: str | Path = "reproduce-out", scale: float = 1.0,
              model: str | None = None, **settings: Any) -> list[dict[str, Any]]:
    """Run the paper's controlled experiments at CPU scale: ``"f2"``, ``"f3"``, ``"f4"``, ``"wd"``,
    ``"formats"``, ``"all"`` or YAML paths. Each trains its runs, sweeps them, computes its verdict from the
    records and writes ``OUT/<name>/`` (verdict.json, index.html, figures/). ``scale`` multiplies every step
    count; ``model`` swaps the model preset. ``settings``: ``seeds`` (train every run with that many seeds and
    pool the verdicts), ``jobs`` (worker processes for independent run folders), ``threads``, ``progress``,
    ``overrides`` (merged into each experiment file, e.g. ``{"base": {"model": {"preset": "micro"}}}``)."""
    from .workflows.reproduction import reproduce as _reproduce
    return _reproduce(experiments, out=out, scale=scale, model=model, **settings)


def export(checkpoint: str | Path, out: str | Path, *, options: ExportOptions | None = None,
           **kwargs: Any) -> dict[str, Any]:
    """Quantize a checkpoint and write it in a standard format (compressed-tensors: pack-quantized integers,
    or with ``format="nvfp4"`` / ``"fp8-e4m3-channel"`` / ``"mxfp4"`` … that number format's compressed-tensors
    format) that ``transformers`` loads without qrobust. Keywords naming :class:`ExportOptions` fields set those (method,
    bits, group_size, sym, include, exclude, calibration, format, verify_blocks, allow_pickle,
    trust_remote_code, device, dtype); the others are the method's options (e.g. ``damp=0.02``).
    ``calibration="auto"``: the checkpoint's own calibration windows when the method needs them.
    ``verify_blocks=N``: reload the export with transformers and compare its loss on N eval blocks with the
    fake-quantized model's (returned as ``loss_*``). ``out`` must be new, empty or an earlier export."""
    from .workflows.checkpoint import export_checkpoint
    opts, method_options = split_options(ExportOptions, options, kwargs)
    return export_checkpoint(checkpoint, out, opts, method_options)


def report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write figures and a self-contained HTML page for a results folder; returns the HTML path."""
    return steps.report(results, out)


def results_text(results: str | Path, format: str = "table", out: str | Path | None = None) -> str | None:
    """A results folder's records as a table, CSV or JSON (or parquet, which needs ``out``); written to
    ``out`` when given."""
    from .workflows.tables import results_text as text
    return text(results, format, out)


def validate_predictors(stores: str | Path | list[str | Path], out: str | Path | None = None,
                        threads: int | None = None, progress: bool = True, **settings: Any) -> dict[str, Any]:
    """How well each cheap predictor ranks the stores' checkpoints like their measured GPTQ ΔQ L
    (``qrobust predictors``): Spearman ρ and Kendall τ with bootstrap intervals, pooled and per run, and
    the cost ratio. ``settings``: ``bits`` (3), ``method`` ("gptq"), ``predictors`` (names; default all
    registered), ``n_blocks`` (32), ``calib_samples`` (16), ``n_boot`` (2000), ``seed``, ``confidence``.
    Writes ``summary.json``, ``values.csv`` and the figure to ``out`` (default ``<first store>/predictors``,
    which ``report`` shows); values are cached there, so a re-run computes only what is missing."""
    from .workflows.predictors import ValidationOptions, run_validation
    roots = [stores] if isinstance(stores, (str, Path)) else list(stores)
    return run_validation(roots, out, ValidationOptions.of(settings), threads=threads, progress=progress)


def trajectory_text(source: str, step_pattern: str | None = None, as_json: bool = False) -> str:
    """The checkpoints a trajectory source resolves to, as a table (or JSON); nothing is downloaded."""
    from .workflows.tables import trajectory_text as text
    return text(source, step_pattern, as_json)


def presets_text() -> str:
    """The open-model presets (``preset:NAME`` sources), by family."""
    from .workflows.tables import presets_text as text
    return text()


__all__ = ["export", "stream_checkpoint", "reproduce", "average", "sharpness", "landscape", "compare_dq",
           "dq_interval", "calib_blocks", "train", "sweep", "report", "quantize", "quantized", "evaluate_loss",
           "degradation", "eval_blocks", "load_checkpoint", "load_trajectory", "LossResult", "QuantResult",
           "QuantSpec", "SweepSummary", "Trajectory", "quantize_checkpoint", "evaluate_checkpoint", "quant_spec",
           "prepare_shards", "open_shards", "TokenShards", "Monitor", "MonitorConfig", "MonitorResult", "PREDICTORS",
           "compute_predictors",
           "results_text", "trajectory_text", "validate_predictors", "presets_text", "sweep_config", "CalibrationOptions", "EvalOptions",
           "ExecutorOptions", "ExportOptions", "LandscapeOptions", "LoadOptions", "StreamOptions", "TaskOptions"]
