"""LR schedules: warmup + constant, cosine, WSD (linear / cosine / 1-sqrt cooldown), cooldown branches.

The multiplier at a step comes from transformers' scheduler functions; :class:`Schedule` wraps them so
the same object drives the optimizer (a ``LambdaLR``) and answers ``lr(step)`` / ``phase(step)`` for
the manifest and reports: one source of truth for the LR at a step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "constant"  # constant | cosine | wsd
    decay_start: int | None = None  # wsd: first step of the decay
    decay_steps: int = 0
    decay_shape: str = "linear"  # linear | cosine | 1-sqrt
    final_lr_ratio: float = 0.0

    def _lambda(self) -> Callable[[int], float]:
        from transformers import optimization as o

        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        if self.kind == "constant":
            sched = o.get_constant_schedule_with_warmup(dummy, self.warmup_steps)
        elif self.kind == "cosine":
            sched = o.get_cosine_with_min_lr_schedule_with_warmup(
                dummy, self.warmup_steps, self.total_steps, min_lr_rate=self.final_lr_ratio)
        elif self.kind == "wsd":
            start = self.decay_start if self.decay_start is not None else self.total_steps - self.decay_steps
            sched = o.get_wsd_schedule(
                dummy, num_warmup_steps=self.warmup_steps, num_decay_steps=self.decay_steps,
                num_stable_steps=start - self.warmup_steps, decay_type=self.decay_shape,
                min_lr_ratio=self.final_lr_ratio)
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        return sched.lr_lambdas[0]

    def factor(self, step: int) -> float:
        """Multiplier of the peak LR used for the update *at* ``step`` (0-based)."""
        return float(self._cached()(step))

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def _cached(self) -> Callable[[int], float]:
        fn = self.__dict__.get("_fn")
        if fn is None:
            fn = self._lambda()
            object.__setattr__(self, "_fn", fn)
        return fn

    def phase(self, step: int) -> str:
        if step < self.warmup_steps:
            return "warmup"
        if self.kind == "constant":
            return "stable"
        if self.kind == "cosine":
            return "decay"
        start = self.decay_start if self.decay_start is not None else self.total_steps - self.decay_steps
        return "stable" if step < start else "decay"

    def torch_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self.factor(s))

    def to_dict(self) -> dict:
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
