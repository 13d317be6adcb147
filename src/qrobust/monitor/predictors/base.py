"""The predictor contract: a cheap number computed from a model's weights (and at most a few calibration
batches) that should rank checkpoints like their measured GPTQ ΔQ L does.

A predictor is a registry entry (:data:`PREDICTORS`): its ``name``, its ``cost`` (what it reads beyond the
weights: ``weights`` only, ``calibration`` batches, or the ``eval`` blocks), whether it is ``per_variant``
(depends on the bits / group size of a :class:`~qrobust.quant.registry.QuantSpec`) and its function
``fn(ctx) -> float``. :func:`compute_predictors` runs a list of them on one model and times each, so the
monitor and the validation (``qrobust predictors``) measure the same thing the same way.

Predictors never change the model: they work on copies, or quantize inside ``quantized()`` which restores
the FP weights. Work several predictors share (activations' XᵀX per layer, the FP loss) goes through
``ctx.cache`` and is charged to the first predictor that computes it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...quant.registry import QuantSpec
from ...registries import Registry

Cost = Literal["weights", "calibration", "eval"]


@dataclass
class PredictorContext:
    """What a predictor may read: the FP model (unchanged on return), the variant it predicts for (None for
    weight statistics that do not depend on one), calibration token ids [n, T] from the training split,
    evaluation blocks [n, T] from the held-out split, and a cache shared by the predictors of one call."""

    model: nn.Module
    spec: QuantSpec | None = None
    calibration: torch.Tensor | None = None
    eval_blocks: torch.Tensor | None = None
    cache: dict[Any, Any] = field(default_factory=dict)

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per call of :func:`compute_predictors` (keys name what is cached)."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


@dataclass(frozen=True)
class Predictor:
    name: str
    cost: Cost
    per_variant: bool
    fn: Callable[[PredictorContext], float]
    doc: str = ""


PREDICTORS: Registry[Predictor] = Registry("predictor", ConfigError)


def register_predictor(name: str, cost: Cost, per_variant: bool) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(ctx) -> float`` as predictor ``name`` (its docstring's first line is the doc)."""
    def deco(fn: Callable[[PredictorContext], float]) -> Callable[[PredictorContext], float]:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        PREDICTORS[name] = Predictor(name, cost, per_variant, fn, doc)
        return fn
    return deco


@dataclass
class PredictorValues:
    """Values and seconds by key: ``<name>`` for per-weight predictors, ``<name>/<spec label>`` per variant."""

    values: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def check_predictors(names: Sequence[str], has_calibration: bool, has_eval: bool) -> None:
    """Refuse unknown names, and predictors whose inputs will not be there, before any work."""
    for n in names:
        p = PREDICTORS.lookup(n)
        if p.cost == "calibration" and not has_calibration:
            raise ConfigError(f"predictor '{n}' reads calibration batches, but none are given")
        if p.cost == "eval" and not has_eval:
            raise ConfigError(f"predictor '{n}' reads evaluation blocks, but none are given")


@torch.no_grad()
def compute_predictors(model: nn.Module, names: Sequence[str], specs: Sequence[QuantSpec],
                       calibration: torch.Tensor | None = None, eval_blocks: torch.Tensor | None = None,
                       cache: dict[Any, Any] | None = None) -> PredictorValues:
    """Every named predictor on ``model``: per-variant ones once per spec (key ``name/label``), the others
    once (key ``name``); each timed. ``cache`` may carry work already done on this model (e.g. the FP loss
    under key ``("fp_loss", id(eval_blocks))``)."""
    check_predictors(names, calibration is not None, eval_blocks is not None)
    ctx = PredictorContext(model, None, calibration, eval_blocks, cache if cache is not None else {})
    out = PredictorValues()
    for n in names:
        p = PREDICTORS.lookup(n)
        for spec in (specs if p.per_variant else [None]):
            ctx.spec = spec
            key = n if spec is None else f"{n}/{spec.label}"
            t0 = time.perf_counter()
            out.values[key] = float(p.fn(ctx))
            out.seconds[key] = time.perf_counter() - t0
    return out
