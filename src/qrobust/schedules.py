"""LR schedules as pure functions of the step: the ONE place the formulas live.

Training drives its optimizer with :class:`Schedule` (``training/schedule.py`` adds the torch side), the
manifest records ``lr(step)`` / ``phase(step)`` from it, and an open-model preset's LR at a checkpoint is
the LR of the same object built from the preset's facts (``preset_schedule``). The formulas are written
exactly as transformers' scheduler functions compute them (same operations in the same order, so the
same floats; ``tests/test_schedules.py`` checks this step by step), without needing torch or transformers
to ask for an LR.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("constant", "cosine", "wsd")
SHAPES = ("linear", "cosine", "1-sqrt")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup from 0 (transformers' constant and cosine schedules)."""
    return float(step) / float(max(1, warmup_steps))


def cosine_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Linear warmup, then a half cosine from 1 to ``final_ratio`` at ``total_steps`` (held there after)."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    progress = min(1.0, float(step - warmup_steps) / float(max(1, total_steps - warmup_steps)))
    factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    factor = factor * (1 - final_ratio) + final_ratio
    return max(0, factor)


def decay_shape(progress: float, shape: str) -> float:
    """1 at progress 0, 0 at progress 1: ``linear``, ``cosine`` (half cosine) or ``1-sqrt``."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown decay shape {shape!r}; known: {', '.join(SHAPES)}")


def wsd_factor(step: int, warmup_steps: int, decay_start: int, decay_steps: int, shape: str,
               final_ratio: float) -> float:
    """Warmup (linear from ``final_ratio``), stable at 1 until ``decay_start``, then a ``shape`` decay over
    ``decay_steps`` to ``final_ratio``, held there after."""
    if step < warmup_steps:
        progress = float(step) / float(max(1, warmup_steps))
        return max(0.0, progress * (1.0 - final_ratio) + final_ratio)
    if step < decay_start:
        return 1.0
    if step < decay_start + decay_steps:
        progress = float(step - decay_start) / float(max(1, decay_steps))
        return max(0.0, decay_shape(progress, shape) * (1.0 - final_ratio) + final_ratio)
    return final_ratio


@dataclass(frozen=True)
class Schedule:
    """Peak LR and shape of one run's schedule; ``lr(step)`` is the LR of the update *at* ``step``."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "constant"  # constant | cosine | wsd
    decay_start: int | None = None  # wsd: first step of the decay
    decay_steps: int = 0
    decay_shape: str = "linear"  # linear | cosine | 1-sqrt
    final_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}; known: {', '.join(KINDS)}")

    @property
    def start_of_decay(self) -> int:
        """wsd: the first step of the decay (``decay_start``, or the last ``decay_steps`` steps)."""
        return self.decay_start if self.decay_start is not None else self.total_steps - self.decay_steps

    def factor(self, step: int) -> float:
        """Multiplier of the peak LR used for the update *at* ``step`` (0-based)."""
        if self.kind == "constant":
            return 1.0 if step >= self.warmup_steps else warmup_factor(step, self.warmup_steps)
        if self.kind == "cosine":
            return float(cosine_factor(step, self.warmup_steps, self.total_steps, self.final_lr_ratio))
        return float(wsd_factor(step, self.warmup_steps, self.start_of_decay, self.decay_steps, self.decay_shape,
                                self.final_lr_ratio))

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def phase(self, step: int) -> str:
        if step < self.warmup_steps:
            return "warmup"
        if self.kind == "constant":
            return "stable"
        if self.kind == "cosine":
            return "decay"
        return "stable" if step < self.start_of_decay else "decay"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def curve(self, points: int = 400) -> list[tuple[int, float]]:
        """(step, lr) samples for plotting the schedule on a twin axis."""
        n = max(2, min(points, self.total_steps + 1))
        steps = sorted({round(i * self.total_steps / (n - 1)) for i in range(n)})
        return [(s, self.lr(s)) for s in steps]

    def branch(self, from_step: int, decay_steps: int, shape: str, final_lr_ratio: float) -> "Schedule":
        """The schedule of a cooldown branch: this run up to ``from_step``, then a decay over ``decay_steps``."""
        return Schedule(peak_lr=self.peak_lr, total_steps=from_step + decay_steps, warmup_steps=self.warmup_steps,
                        kind="wsd", decay_start=from_step, decay_steps=decay_steps, decay_shape=shape,
                        final_lr_ratio=final_lr_ratio)


def preset_schedule(facts: dict[str, Any], peak_lr: float | None) -> Schedule | None:
    """The schedule an open-model preset's facts describe (``kind: cosine`` with ``total_steps`` and
    ``warmup_steps`` or ``warmup_frac``; ``kind: wsd`` with ``decay_start`` / ``decay_end`` and ``decay``),
    or None where they do not say enough (no peak LR, a cut or staged schedule, an unknown cooldown start)."""
    if peak_lr is None:
        return None
    kind = facts.get("kind")
    final = facts.get("final_lr_ratio", 0.0)
    if kind == "cosine":
        total = facts["total_steps"]
        warm = facts.get("warmup_steps", round(facts.get("warmup_frac", 0.0) * total))
        return Schedule(peak_lr=peak_lr, total_steps=total, warmup_steps=warm, kind="cosine", final_lr_ratio=final)
    if kind == "wsd" and "decay_start" in facts:
        start, end = facts["decay_start"], facts["decay_end"]
        return Schedule(peak_lr=peak_lr, total_steps=end, warmup_steps=facts.get("warmup_steps", 0), kind="wsd",
                        decay_start=start, decay_steps=end - start, decay_shape=facts.get("decay", "linear"),
                        final_lr_ratio=final)
    return None
