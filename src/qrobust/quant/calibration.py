"""Calibration tokens for one model, with a memo that quantization variants of that model share.

What a variant computes from the *FP* model alone (e.g. GPTQ's Hessians when nothing upstream is
quantized yet) is the same for every bit-width and group size, so a sweep computes it once per
checkpoint. A ``CalibrationSet`` therefore belongs to one model's FP weights: make a new one per
checkpoint (``quantized()`` restores the FP weights after each variant, which keeps the memo valid).
Plain token tensors are accepted everywhere and simply share nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class CalibrationSet:
    tokens: torch.Tensor  # [n_samples, seq_len]
    memo: dict[Any, Any] = field(default_factory=dict)
    hits: int = 0  # how many times a memoised result was reused (for tests and timings)

    def get_or_compute(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key in self.memo:
            self.hits += 1
            return self.memo[key]
        value = compute()
        self.memo[key] = value
        return value


def tokens_of(calibration: torch.Tensor | CalibrationSet | None) -> torch.Tensor | None:
    return calibration.tokens if isinstance(calibration, CalibrationSet) else calibration


def memoised(calibration: torch.Tensor | CalibrationSet | None, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, or its earlier result for the same model and key when a CalibrationSet is given."""
    if isinstance(calibration, CalibrationSet):
        return calibration.get_or_compute(key, compute)
    return compute()
