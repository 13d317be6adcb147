"""Where quantization time goes: the part of a quantizer's run spent on calibration forwards.

A pipeline opens a ``calibration_clock()`` around one variant's quantization; a quantizer wraps each
forward pass it makes over calibration data (collecting activations or Hessians, carrying the
calibration set to the next block) in ``calibrating()``. Without an open clock ``calibrating()`` costs
nothing, and nested ``calibrating()`` blocks count once, so quantizers need not know who measures them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Clock:
    seconds: float = 0.0  # calibration forwards, summed
    _depth: int = 0


_CLOCK: ContextVar[Clock | None] = ContextVar("qrobust_calibration_clock", default=None)


@contextmanager
def calibration_clock() -> Iterator[Clock]:
    """A fresh clock for the calibration forwards made inside this block; an outer clock does not see
    the ``calibrating()`` blocks opened meanwhile (each variant is measured on its own)."""
    clock = Clock()
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextmanager
def calibrating() -> Iterator[None]:
    """Count the time inside as calibration on the open clock (once, however deeply nested)."""
    clock = _CLOCK.get()
    if clock is None or clock._depth:
        if clock is not None:
            clock._depth += 1
        try:
            yield
        finally:
            if clock is not None:
                clock._depth -= 1
        return
    clock._depth = 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        clock.seconds += time.perf_counter() - t0
        clock._depth = 0
