"""One optimizer step over this rank's micro batches: forward under autocast, backward of loss / accum,
the gradient all-reduce on the last micro batch only, unscale, clip, step.

With one process, one micro batch and fp32 this is the step qrobust always took (``loss / 1`` is exact),
so every verified number is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .parallel import gradient_sync, to_full
from .precision import Precision
from .runtime import Runtime


@dataclass(frozen=True)
class StepResult:
    """The global batch's mean loss (averaged over micro batches and ranks; not finite: nothing was updated)
    and the gradient norm before clipping."""

    loss: float
    grad_norm: float


def _grad_norm(model: nn.Module, clip: float | None) -> torch.Tensor:
    params = [p for p in model.parameters() if p.grad is not None]
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, micro: list[torch.Tensor], precision: Precision,
                   rt: Runtime, clip: float | None) -> StepResult:
    """Train one step on ``micro`` (this rank's micro batches, already on its device)."""
    total = torch.zeros((), device=rt.device)
    for i, x in enumerate(micro):
        with gradient_sync(model, rt, enabled=i == len(micro) - 1), precision.autocast():
            loss = model(input_ids=x, labels=x).loss
        if i == 0:
            opt.zero_grad(set_to_none=True)
        precision.backward(loss if len(micro) == 1 else loss / len(micro))
        total += loss.detach().float()
    mean = rt.mean(total / len(micro))
    if not torch.isfinite(mean):  # the caller refuses it; the weights are not touched
        return StepResult(float(mean.item()), float("nan"))
    precision.unscale(opt)
    norm = _grad_norm(model, clip)
    precision.step(opt)
    return StepResult(float(mean.item()), float(to_full(norm).item()))
