"""Training throughput: tokens per second over the recent steps, and model FLOPs utilisation (MFU).

The first step after a start or resume is left out: it carries torch.compile, allocator warm-up and the
first data reads, and would drag the figure down for the whole window. Tokens/s is the ratio of sums over
the last ``window`` measured steps (not a mean of per-step rates, which would overweight fast steps).
MFU = tokens/s × FLOPs per token / (peak FLOPs per device × world size); the FLOPs per token and the peak
come from the caller (training/flops.py), this module only does the arithmetic.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator

# the metrics that depend on wall time: a resumed run's step log equals an uninterrupted one's without them
TIMING_KEYS = ("tokens_per_s", "mfu")


class Throughput:
    """Meter fed once per optimizer step with the step's global token count and its wall time.

    ``flops_per_token``: training FLOPs per token (forward + backward); ``peak_flops``: peak FLOP/s of one
    device, None when unknown (no MFU then); ``world_size``: the number of devices sharing the step."""

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int = 1,
                 window: int = 20, skip_first: int = 1) -> None:
        if flops_per_token <= 0 or world_size < 1 or window < 1 or skip_first < 0:
            raise ValueError("flops_per_token > 0, world_size >= 1, window >= 1 and skip_first >= 0 are needed")
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops must be positive or None, got {peak_flops}")
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.recent: deque[tuple[int, float]] = deque(maxlen=window)
        self.to_skip = skip_first
        self.total_tokens, self.total_seconds = 0, 0.0

    def step(self, tokens: int, seconds: float) -> None:
        """Record one step: ``tokens`` processed by all devices together in ``seconds`` of wall time."""
        if self.to_skip:
            self.to_skip -= 1
            return
        self.recent.append((tokens, seconds))
        self.total_tokens += tokens
        self.total_seconds += seconds

    @contextlib.contextmanager
    def measure(self, tokens: int) -> Iterator[None]:
        """Time the block as one step of ``tokens`` tokens (the block must end with the step done on the
        device, e.g. after ``loss.item()``)."""
        start = time.perf_counter()
        yield
        self.step(tokens, time.perf_counter() - start)

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens per second over the recent window; None before the first measured step."""
        seconds = sum(s for _, s in self.recent)
        return sum(t for t, _ in self.recent) / seconds if seconds > 0 else None

    def mfu_of(self, tokens_per_s: float | None) -> float | None:
        """The fraction of the devices' peak that ``tokens_per_s`` tokens per second use."""
        if tokens_per_s is None or self.peak_flops is None:
            return None
        return tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)

    @property
    def mfu(self) -> float | None:
        """MFU over the recent window; None when the peak is unknown or nothing was measured yet."""
        return self.mfu_of(self.tokens_per_s)

    def metrics(self) -> dict[str, float]:
        """``{"tokens_per_s": ..., "mfu": ...}`` for the step log; each key only when it has a value."""
        out = dict(zip(TIMING_KEYS, (self.tokens_per_s, self.mfu)))
        return {k: v for k, v in out.items() if v is not None}

    def summary(self) -> dict[str, float]:
        """Whole-run figures (every measured step, not just the window) for the run manifest."""
        rate = self.total_tokens / self.total_seconds if self.total_seconds > 0 else None
        out = {"tokens": self.total_tokens, "seconds": self.total_seconds, "tokens_per_s": rate,
               "mfu": self.mfu_of(rate)}
        return {k: v for k, v in out.items() if v is not None}
