"""qrobust: how robust are language-model checkpoints to post-training quantization, along training?

Python API (see README): ``train``, ``quantize``, ``quantized``, ``evaluate_loss``, ``eval_blocks``,
``sweep``, ``stream_checkpoint``, ``average``, ``sharpness``, ``landscape``, ``compare_dq``, ``report``, ``load_checkpoint``,
``load_trajectory``, ``prepare_shards``, ``open_shards``, ``Monitor`` (live ΔQ L while training), ``compute_predictors``,
``validate_predictors``, ``quantize_checkpoint``, ``evaluate_checkpoint`` (and the typed options of the wide
calls: ``ExportOptions``, ``LandscapeOptions``, ...). Names load lazily so the CLI starts fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

__all__ = ["export", "stream_checkpoint", "reproduce", "average", "sharpness", "landscape", "compare_dq", "dq_interval", "calib_blocks", "train", "sweep", "report", "quantize", "quantized", "evaluate_loss", "degradation", "eval_blocks",
           "load_checkpoint", "load_trajectory", "LossResult", "QuantResult", "QuantSpec", "SweepSummary", "Trajectory",
           "prepare_shards", "open_shards", "Monitor", "MonitorConfig", "MonitorResult", "PREDICTORS", "compute_predictors",
           "validate_predictors",
           "quantize_checkpoint", "evaluate_checkpoint", "quant_spec", "CalibrationOptions", "EvalOptions",
           "ExecutorOptions", "ExportOptions", "LandscapeOptions", "LoadOptions", "StreamOptions", "TaskOptions",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module 'qrobust' has no attribute {name!r}")
