"""Where a sweep's time goes, from the timings a variant record carries: one definition of the phases for
the sweep summary and the report.

Phases are disjoint: reading the checkpoint (``load``), the FP evaluation (``fp_eval``), ``calibration``
(building the calibration tokens + the quantizer's forwards over them), ``quantize`` (the quantizer's
time less those forwards) and ``eval`` (the quantized model's evaluation). Records written before the
calibration timings existed count their whole quantizer time as ``quantize``.
"""
from __future__ import annotations

from typing import Mapping

PHASES = ("load", "fp_eval", "calibration", "quantize", "eval")
PHASE_NAMES = {"load": "load", "fp_eval": "FP eval", "calibration": "calibration", "quantize": "quantize",
               "eval": "eval"}


def variant_phases(timings: Mapping[str, float]) -> dict[str, float]:
    """A variant record's own time by phase: calibration, quantize and eval (seconds)."""
    forwards = float(timings.get("calibration_s") or 0.0)
    return {"calibration": forwards + float(timings.get("calib_tokens_s") or 0.0),
            "quantize": max(float(timings.get("quantize_s") or 0.0) - forwards, 0.0),
            "eval": float(timings.get("eval_s") or 0.0)}
