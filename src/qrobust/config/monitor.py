"""Typed configuration of the live PTQ-robustness monitor (the ``monitor:`` block of a training config).

The monitor reads the weights and never changes the trajectory, so it is not part of a run's identity: it may
be switched on, off or changed when a run is resumed."""
from __future__ import annotations

from pydantic import Field, field_validator

from .base import Strict
from .sweep import bits_problem, group_size_problem


class AlertRule(Strict):
    """Warn when ``metric`` (a monitor key without ``monitor/``, e.g. ``dq/rtn-w3g128``) rose by more than
    ``rise_pct`` percent over the last ``window`` evaluations that logged it:
    (v_i − v_{i−window}) / |v_{i−window}| > rise_pct / 100."""

    metric: str = Field(min_length=1)
    rise_pct: float = Field(gt=0)
    window: int = Field(default=3, ge=1)

    @field_validator("metric")
    @classmethod
    def _bare(cls, v: str) -> str:
        if v.startswith("monitor/"):
            raise ValueError(f"name the metric without the 'monitor/' prefix: '{v[len('monitor/'):]}'")
        return v


class MonitorConfig(Strict):
    """Every ``every`` steps: FP and RTN loss on ``n_blocks`` held-out blocks (the validation split, as a sweep's
    eval set), GPTQ every ``gptq_every``-th evaluation (0: never) calibrated on ``calib_samples`` training
    windows, ΔQ L with a paired-bootstrap interval (``n_boot``, ``confidence``), the named predictors, alerts."""

    every: int = Field(default=100, ge=1)
    n_blocks: int = Field(default=32, ge=2)  # a bootstrap over blocks needs two
    batch_size: int = Field(default=8, ge=1)
    bits: list[int] = Field(default_factory=lambda: [3, 4], min_length=1)
    group_size: int = 128
    sym: bool = True
    gptq_every: int = Field(default=0, ge=0)
    calib_samples: int = Field(default=16, ge=1)
    predictors: list[str] = Field(default_factory=list)
    alerts: list[AlertRule] = Field(default_factory=list)
    n_boot: int = Field(default=1000, ge=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        for b in v:
            if bits_problem(b):
                raise ValueError(bits_problem(b))
        if len(set(v)) != len(v):
            raise ValueError(f"bits are listed twice: {v}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if group_size_problem(v):
            raise ValueError(group_size_problem(v))
        return v
