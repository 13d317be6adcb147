"""Run measurements on a model being trained without leaving a trace in the training state.

Whatever a measurement does, training must continue exactly as if it had not run: the next batch's dropout
masks and any sampling draw from the same RNG states, every module keeps its train/eval flag, grad mode and
autocast are as the loop set them. :func:`preserved` saves all of that and puts it back on the way out (also
when the measurement raises). The weights themselves are restored by ``quant.quantized`` (bit for bit);
:func:`weights_digest` lets a test check that.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn


def rng_states() -> dict[str, Any]:
    """Every RNG a training step or a data loader may draw from: torch CPU, each CUDA device (when CUDA is
    initialised; querying it otherwise would initialise it), python ``random``, numpy's global generator."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate(),
                           "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def _autocast_off(model: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast disabled for the device the model is on (and the CPU): measurements run in the weights' dtype."""
    stack = contextlib.ExitStack()
    kinds = {"cpu"} | {p.device.type for p in list(model.parameters())[:1]}
    for kind in sorted(kinds & {"cpu", "cuda"}):
        stack.enter_context(torch.autocast(device_type=kind, enabled=False))
    return stack


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run the block in eval mode, without autograd or autocast; restore RNG states, every module's
    ``training`` flag and grad mode on exit."""
    states = rng_states()
    modes = [(m, m.training) for m in model.modules()]
    grad = torch.is_grad_enabled()
    try:
        with _autocast_off(model), torch.no_grad():
            model.eval()
            yield
    finally:
        for m, was in modes:
            m.training = was
        torch.set_grad_enabled(grad)
        set_rng_states(states)


def weights_digest(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to check that a measurement left them bit-identical."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
