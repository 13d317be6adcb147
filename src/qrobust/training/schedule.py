"""The training side of LR schedules: the formulas live in :mod:`qrobust.schedules` (one place, shared
with the presets' LR facts); here the same :class:`Schedule` object drives a torch optimizer."""
from __future__ import annotations

import torch

from ..schedules import Schedule

__all__ = ["Schedule", "torch_scheduler"]


def torch_scheduler(schedule: Schedule, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose multiplier at each step is ``schedule.factor(step)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
