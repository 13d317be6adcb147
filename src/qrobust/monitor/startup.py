"""Start-up refusals of a monitor: everything that would fail at its first evaluation fails before the first
training step instead, as one line naming what is wrong and what to do.

The checks read only the model's structure, so they also work on a model built on the meta device (the
loop checks before it writes its config or builds the real model)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..config import MonitorConfig
from ..errors import ConfigError
from ..quant import QuantSpec, select_linears


def check_model(cfg: MonitorConfig, model: nn.Module) -> None:
    """A model with quantizable linears, each at least one group wide."""
    layers = select_linears(model, required=False)
    if not layers:
        raise ConfigError(f"monitor: {type(model).__name__} has no linear layer qrobust can quantize (the LM head "
                          "is never quantized); remove the monitor: block for this model")
    if cfg.group_size == -1:
        return
    for name, lin in layers.items():
        if cfg.group_size > lin.in_features:
            raise ConfigError(f"monitor.group_size {cfg.group_size} does not fit layer '{name}' "
                              f"({lin.in_features} input features); use a group size of at most {lin.in_features}, "
                              "or -1 (per output channel)")


def predictor_keys(cfg: MonitorConfig, specs: Sequence[QuantSpec]) -> list[str]:
    """The predictor keys the monitor logs (``pred/<name>`` or ``pred/<name>/<label>``); refuses unknown names."""
    from .predictors import PREDICTORS  # importing the package registers the predictors
    out = []
    for n in cfg.predictors:
        p = PREDICTORS.lookup(n)
        out += [f"pred/{n}/{s.label}" for s in specs] if p.per_variant else [f"pred/{n}"]
    return out


def needs_calibration(cfg: MonitorConfig) -> bool:
    """GPTQ or a predictor that reads calibration batches (unknown predictor names are refused here)."""
    from .predictors import PREDICTORS
    return cfg.gptq_every > 0 or any(PREDICTORS.lookup(n).cost == "calibration" for n in cfg.predictors)


def metric_keys(cfg: MonitorConfig, rtn: Sequence[QuantSpec], gptq: Sequence[QuantSpec]) -> list[str]:
    """Every metric the monitor may log, without the ``monitor/`` prefix (what an alert rule may name)."""
    keys = ["loss_fp", "seconds"]
    for s in [*rtn, *gptq]:
        keys += [f"{k}/{s.label}" for k in ("loss_q", "dq", "dq_low", "dq_high")]
    return keys + predictor_keys(cfg, rtn)


def check_alerts(cfg: MonitorConfig, known: Sequence[str]) -> None:
    for r in cfg.alerts:
        if r.metric not in known:
            raise ConfigError(f"monitor alert metric '{r.metric}' is not a monitored metric; known: "
                              f"{', '.join(known)}")
