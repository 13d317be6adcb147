"""Mixed precision as autocast around the forward pass: master weights and AdamW state stay fp32.

``fp32``: no autocast (the exact path every verified number comes from). ``bf16-mixed``: matmuls in bf16
under autocast, no loss scaling (bf16 has fp32's exponent range). ``fp16-mixed``: autocast to fp16 with a
dynamic loss scale (``torch.amp.GradScaler``) whose state is saved in every checkpoint, so resume is exact.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

_AUTOCAST = {"fp32": None, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


class Precision:
    """The autocast context and (fp16 only) the loss scaler of one training process."""

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.device = device
        self.dtype = _AUTOCAST[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16-mixed" else None

    def autocast(self) -> ContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Make the gradients true gradients (before clipping and the norm)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)  # skipped when the scaled gradients overflowed
            self.scaler.update()

    def state(self) -> dict[str, Any] | None:
        """JSON-able loss-scaler state (None without one)."""
        if self.scaler is None:
            return None
        return {k: (float(v) if isinstance(v, float) else v) for k, v in self.scaler.state_dict().items()}

    def restore(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
