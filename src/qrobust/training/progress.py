"""What the training progress bar shows after its counter: loss, LR, tokens/s and MFU, each short."""
from __future__ import annotations

from collections.abc import Mapping

_SUFFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_ROUNDS_UP = 0.9995  # 999.6 prints as 1.00k, not 1e+03


def short_count(value: float) -> str:
    """A rate in three significant figures with a k/M/G suffix: 1234567 -> '1.23M', 512 -> '512'."""
    for scale, suffix in _SUFFIXES:
        if abs(value) >= scale * _ROUNDS_UP:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_postfix(metrics: Mapping[str, float | None]) -> dict[str, str]:
    """tqdm ``set_postfix`` entries for the metrics present: ``loss`` (3 decimals), ``lr`` (2 significant
    digits, scientific), ``tok/s`` (from ``tokens_per_s``) and ``mfu`` (a percentage), in that order."""
    shown = {"loss": lambda v: f"{v:.3f}", "lr": lambda v: f"{v:.2e}",
             "tokens_per_s": short_count, "mfu": lambda v: f"{100 * v:.1f}%"}
    labels = {"tokens_per_s": "tok/s"}
    return {labels.get(k, k): fmt(metrics[k]) for k, fmt in shown.items() if metrics.get(k) is not None}
