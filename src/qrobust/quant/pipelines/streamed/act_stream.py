"""Activation / KV-cache quantization and SmoothQuant of one variant in the layer-streamed pass: the
in-memory rules (``act_hooks.py``, ``smoothquant.py``) applied block by block, on the same calibration
batches, so the streamed numbers equal the in-memory ones.

Per block: SmoothQuant measures its inputs' amax on an FP calibration stream advanced through the FP
block, then folds (in memory: one FP pass before anything is quantized); after the weights are quantized,
static ranges are observed on a calibration stream advanced through the quantized block with FP
activations (in memory: one pass of the weight-quantized model); the hooks are live only while the
variant's own stream runs the block, never during the FP stream or the calibration streams.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ...registry import QuantSpec
from ...timing import calibrating
from ..act_hooks import ActPlan, act_calibration_batch, act_plan, block_attentions, fake_quantizing, observing, \
    smooth_alpha
from ..smoothquant import amax_hooks, block_mappings, smooth_block
from .block_weights import StreamedModel
from .hidden_states import HiddenStates, Tier


@dataclass
class ActStream:
    """A variant's activation plan with its calibration streams: ``calib`` through the weight-quantized
    blocks (static ranges), ``fp_calib`` through the FP blocks (SmoothQuant's amax)."""

    plan: ActPlan | None
    alpha: float
    kind: str
    calib: HiddenStates | None = None
    fp_calib: HiddenStates | None = None

    @classmethod
    def start(cls, m: StreamedModel, spec: QuantSpec, tokens: torch.Tensor | None, tier: Tier,
              states_dir) -> "ActStream | None":
        """The variant's streams (None for a weight-only variant without SmoothQuant)."""
        plan, alpha = act_plan(spec), smooth_alpha(spec)
        if plan is None and not alpha:
            return None
        batch = act_calibration_batch(spec)
        kind = getattr(m.model.config, "model_type", type(m.model).__name__)
        out = cls(plan, alpha, kind)
        if plan is not None and plan.static:
            out.calib = m.stream_of(tokens, batch, tier, states_dir)
        if alpha:
            out.fp_calib = m.stream_of(tokens, batch, tier, states_dir)
        return out

    @staticmethod
    def streams(spec: QuantSpec) -> int:
        """How many calibration streams ``start`` opens for ``spec`` (for the memory estimate)."""
        plan = act_plan(spec)
        return int(plan is not None and plan.static) + int(smooth_alpha(spec) > 0)

    def before_quantize(self, block: nn.Module, prefix: str, linears: dict[str, nn.Linear]
                        ) -> dict[str, torch.Tensor] | None:
        """SmoothQuant on the FP block: amax over the FP stream, then the fold; the smoothed weights (what
        the method quantizes, the reference of its errors), None without SmoothQuant."""
        if self.fp_calib is None:
            return None
        local = {n[len(prefix) + 1:]: lin for n, lin in linears.items()}
        maps = block_mappings(block, local, self.kind)
        amax: dict[int, torch.Tensor] = {}
        handles = amax_hooks(maps, local, amax)
        try:
            with calibrating():
                self.fp_calib.advance(block)
        finally:
            for h in handles:
                h.remove()
        smooth_block(maps, local, amax, self.alpha)
        return {n: lin.weight.detach().clone() for n, lin in linears.items()}

    def after_quantize(self, block: nn.Module, prefix: str, linears: dict[str, nn.Linear]) -> None:
        """Static ranges of this block, observed while the calibration stream passes its quantized weights."""
        if self.calib is None or self.plan is None:
            return
        with observing(self.plan, linears, block_attentions(block, prefix + ".", self.plan)), calibrating():
            self.calib.advance(block)

    @contextmanager
    def live(self, block: nn.Module, prefix: str, linears: dict[str, nn.Linear]) -> Iterator[None]:
        """The block's activation and KV hooks, for the variant's own stream."""
        if self.plan is None:
            yield
            return
        with fake_quantizing(self.plan, linears, block_attentions(block, prefix + ".", self.plan)):
            yield

    def close(self) -> None:
        for st in (self.calib, self.fp_calib):
            if st is not None:
                st.close()
        self.calib = self.fp_calib = None
