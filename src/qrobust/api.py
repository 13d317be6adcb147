"""The public Python API: small functions over the modules, each documented in the README."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import EvalConfig, SweepConfig, TrainConfig, load_yaml, parse_config
from .errors import ConfigError
from .evaluate import LossResult, degradation, evaluate_loss
from .quant.pipelines.streamed import stream_checkpoint
from .models import load_checkpoint, read_model_config, resolve_device, resolve_dtype
from .quant import QuantResult, QuantSpec, quantize, quantized
from .sweeps.run import SweepSummary
from .sources import load_source as load_trajectory
from .stats import compare_dq, dq_interval
from .trajectory import Trajectory


def _config(cls, config: Any, kwargs: dict[str, Any], what: str):
    if isinstance(config, cls):
        data: Any = config.model_dump()
    elif isinstance(config, (str, Path)):
        data, what = load_yaml(config), f"{what} file {config}"
    else:
        data = config if config is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(data).__name__}")
    return parse_config(cls, {**data, **kwargs}, what)


def train(config: TrainConfig | dict | str | Path | None = None, progress: bool = True,
          trust_remote_code: bool = False, **kwargs: Any) -> Trajectory:
    """Train a run (+ cooldown branches) from a config object, dict or YAML path; keyword args override keys.
    ``trust_remote_code``: allow the Python code of a tokenizer folder named in ``data.tokenizer``.

    Returns the :class:`Trajectory` of every checkpoint written. Re-running resumes where it stopped.
    """
    from .training.loop import train as _train
    return _train(_config(TrainConfig, config, kwargs, "train config"), progress=progress,
                  trust_remote_code=trust_remote_code)


def sweep_config(config: SweepConfig | dict | str | Path, **kwargs: Any) -> SweepConfig:
    """The validated sweep config (a bad key, type or method option is one ConfigError)."""
    from .sweeps.run import variants
    cfg = _config(SweepConfig, config, kwargs, "sweep config")
    variants(cfg)
    return cfg


def sweep(config: SweepConfig | dict | str | Path, progress: bool = True, array_index: int | None = None,
          array_count: int | None = None, executor: str = "local", ray_address: str | None = None,
          cpus_per_task: int = 1, gpus_per_task: float = 0.0, **kwargs: Any) -> SweepSummary:
    """Quantize + evaluate every checkpoint of a trajectory for every (method, bits, group size).

    ``array_index``/``array_count``: this worker's share of a job array (every count-th checkpoint).
    ``executor="ray"``: one Ray task per checkpoint (local Ray, or the cluster at ``ray_address``)."""
    from .sweeps.executors import ExecutorOptions, run_executor
    cfg = _config(SweepConfig, config, kwargs, "sweep config")
    return run_executor(executor, cfg, ExecutorOptions(progress, array_index, array_count, ray_address, cpus_per_task,
                                                       gpus_per_task))


def average(sources: str | dict | list, averager: str, out: str | Path, window: int = 5, stride: int = 1,
            beta: float = 0.9, runs: list[str] | None = None, eval: dict | None = None,
            progress: bool = True, allow_pickle: bool = False, trust_remote_code: bool = False) -> Trajectory:
    """Average checkpoints: ``lawa`` (window, stride) or ``ema`` (beta) along one trajectory, ``soup`` or
    ``greedy-soup`` over the last checkpoint of every run of the sources. Streams from safetensors; writes
    averaged checkpoints + a manifest (originals and averaged runs) to ``out``; returns that trajectory."""
    from .averaging import average as _average
    srcs = sources if isinstance(sources, list) else [sources]
    return _average(srcs, averager, out, window=window, stride=stride, beta=beta, runs=runs, eval_config=eval,
                    progress=progress, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


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
    ``settings``: runs, grid, margin, span, center, n_blocks, seq_len, batch_size, params, seed, progress."""
    from .workflows.landscape import trajectory_landscape
    return trajectory_landscape(source, out, plane=plane, **settings)


def reproduce(experiments: str | list[str], out: str | Path = "reproduce-out", scale: float = 1.0,
              model: str | None = None, threads: int | None = None, progress: bool = True,
              overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run the paper's controlled experiments at CPU scale: ``"f2"``, ``"f3"``, ``"f4"``, ``"wd"``,
    ``"all"`` or YAML paths. Each trains its runs, sweeps them, computes its verdict from the records and
    writes ``OUT/<name>/`` (verdict.json, index.html, figures/). ``scale`` multiplies every step count;
    ``overrides`` is merged into each experiment file (e.g. ``{"base": {"model": {"preset": "micro"}}}``)."""
    from .workflows.reproduction import reproduce as _reproduce
    return _reproduce(experiments, out=out, scale=scale, model=model, threads=threads, progress=progress,
                      overrides=overrides)


def export(checkpoint: str | Path, out: str | Path, method: str = "rtn", bits: int = 4, group_size: int = 128,
           sym: bool = True, include: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = (),
           calibration: torch.Tensor | None | str = "auto", format: str = "compressed-tensors", verify_blocks: int = 0,
           allow_pickle: bool = False, trust_remote_code: bool = False, device: str = "auto", dtype: str = "float32",
           **options: Any) -> dict[str, Any]:
    """Quantize a checkpoint and write it in a standard format (compressed-tensors pack-quantized) that
    ``transformers`` loads without qrobust. ``calibration="auto"``: the checkpoint's own calibration
    windows when the method needs them. ``verify_blocks=N``: reload the export with transformers and
    compare its loss on N eval blocks with the fake-quantized model's (returned as ``loss_*``)."""
    from .data.tokenizer import load_tokenizer
    from .models import check_vocab
    from .quant import QuantSpec, get_quantizer
    from .quant.pipelines.in_memory import quantize_inplace
    from .quant.export import FORMATS, _require_package, check_exportable, check_spec, export_compressed_tensors

    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'; known: {', '.join(FORMATS)}")
    _require_package()
    spec = QuantSpec(method=method, bits=bits, group_size=group_size, sym=sym, include=tuple(include),
                     exclude=tuple(exclude), options=tuple(sorted(options.items())))
    quantizer = get_quantizer(method)
    quantizer.check_options(options)
    check_spec(spec)  # refuse what the format cannot hold before loading anything big
    model = load_checkpoint(checkpoint, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, dtype=dtype,
                            device=device)
    tok = load_tokenizer(checkpoint, trust_remote_code)
    check_vocab(model, tok, checkpoint)  # the export carries this tokenizer: it must be the model's
    if isinstance(calibration, str):
        calibration = (calib_blocks(checkpoint, trust_remote_code=trust_remote_code) if quantizer.needs_calibration
                       else None)
    result = quantize_inplace(model, spec, calibration)
    check_exportable(result)
    report: dict[str, Any] = {"source": str(Path(checkpoint).resolve()), "label": spec.label}
    blocks = eval_blocks(checkpoint, n_blocks=verify_blocks, trust_remote_code=trust_remote_code) if verify_blocks \
        else None
    if blocks is not None:
        report["loss_fake_quant"] = evaluate_loss(model, blocks, name=f"checkpoint '{checkpoint}' quantized as "
                                                                    f"{spec.label}").loss
    path = export_compressed_tensors(model, result, out, tok, extra={"source": report["source"]})
    report["out"] = str(path)
    if blocks is not None:
        from transformers import AutoModelForCausalLM

        from .models import remote_code_error, remote_code_refused
        try:
            reloaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype),
                                                            local_files_only=True,
                                                            trust_remote_code=bool(trust_remote_code))
        except ValueError as e:
            if remote_code_refused(e):
                raise remote_code_error(path) from None
            raise
        reloaded = reloaded.to(resolve_device(device))
        report["loss_reloaded"] = evaluate_loss(reloaded, blocks, name=f"the export '{path}'").loss
        report["loss_diff"] = report["loss_reloaded"] - report["loss_fake_quant"]
    return report


def report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write figures and a self-contained HTML page for a results folder; returns the HTML path."""
    from .reporting import write_report
    return write_report(results, out)


def eval_blocks(checkpoint: str | Path, corpus: str | None = None, split: str = "val", n_blocks: int = 64,
                seq_len: int | None = None, field: str | None = None, trust_remote_code: bool = False) -> torch.Tensor:
    """Held-out token blocks for ``checkpoint``, tokenized with its own tokenizer.

    Defaults follow the checkpoint's training data config (its validation split) when it has one.
    """
    from .data.tokenizer import load_tokenizer
    from .data.evalset import build_eval_set, checkpoint_data_config, tokenizer_fingerprint

    p = Path(checkpoint)
    tok = load_tokenizer(p, trust_remote_code)
    data_cfg = checkpoint_data_config(p)
    ecfg = parse_config(EvalConfig, {"corpus": corpus, "split": split, "n_blocks": n_blocks, "seq_len": seq_len,
                                     "field": field}, "eval settings")
    return build_eval_set(ecfg, data_cfg, tok, tokenizer_fingerprint(p)).blocks


def calib_blocks(checkpoint: str | Path, n_samples: int = 128, seq_len: int | None = None,
                 corpus: str | None = None, seed: int = 0, field: str | None = None,
                 trust_remote_code: bool = False) -> torch.Tensor:
    """Seeded calibration windows ([n_samples, seq_len]) from the checkpoint's training split (or ``corpus``)."""
    from .config import CalibrationConfig
    from .data.tokenizer import load_tokenizer
    from .data.evalset import (build_calibration, checkpoint_data_config, default_calibration_length,
                                 tokenizer_fingerprint)

    p = Path(checkpoint)
    data_cfg = checkpoint_data_config(p)
    ccfg = parse_config(CalibrationConfig, {"corpus": corpus, "field": field, "n_samples": n_samples,
                                            "seq_len": seq_len, "seed": seed}, "calibration settings")
    default_len = default_calibration_length(data_cfg, read_model_config(p, required=False))
    blocks, _ = build_calibration(ccfg, data_cfg, load_tokenizer(p, trust_remote_code), tokenizer_fingerprint(p),
                                  default_len)
    return blocks


__all__ = ["export", "stream_checkpoint", "reproduce", "average", "sharpness", "landscape", "compare_dq", "dq_interval", "calib_blocks", "train", "sweep", "report", "quantize", "quantized", "evaluate_loss", "degradation", "eval_blocks",
           "load_checkpoint", "load_trajectory", "LossResult", "QuantResult", "QuantSpec", "SweepSummary", "Trajectory"]
