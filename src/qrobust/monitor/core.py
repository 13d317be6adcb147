"""The live ΔQ L monitor: FP and quantized loss of the *current* weights on fixed held-out blocks.

Per evaluation: the FP loss once; RTN at every configured bit-width (always) and GPTQ (every
``gptq_every``-th evaluation), each inside ``quantized()`` so the FP weights come back bit for bit; ΔQ L with
its paired-bootstrap interval over the blocks (:func:`qrobust.stats.dq_interval`, seed 0, as a sweep's record);
the configured predictors; the alert rules. All of it under :func:`~.guard.preserved`, so the training that
continues afterwards is bit-identical to one without the monitor. The numbers equal a sweep's records of the
same checkpoint with the same blocks and settings: the same functions compute both.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import DataConfig, MonitorConfig
from ..errors import QrobustWarning
from ..evaluate import LossResult, NonFiniteLoss, degradation, evaluate_loss
from ..quant import CalibrationSet, QuantSpec, quantized
from ..stats import dq_interval
from . import alerts as alerting
from .guard import preserved
from .startup import check_alerts, check_model, metric_keys, needs_calibration, predictor_keys


@dataclass
class MonitorResult:
    """One evaluation: ``metrics`` are the logged keys (``monitor/...``), ``alerts`` the metrics whose rule fired
    (e.g. ``dq/rtn-w3g128``; the warning line said by how much, ``monitor/alert/<metric>`` records it)."""

    step: int
    metrics: dict[str, float]
    alerts: list[str] = field(default_factory=list)
    seconds: float = 0.0


def variant_metrics(label: str, fp: LossResult, q: LossResult, n_boot: int, confidence: float) -> dict[str, float]:
    """``loss_q``, ``dq`` (= L_q / L_FP − 1, as a record's ``dq_rel``) and the bootstrap interval of one variant."""
    ci = dq_interval(fp.block_sums, q.block_sums, n_boot, confidence, seed=0)
    return {f"monitor/loss_q/{label}": q.loss, f"monitor/dq/{label}": degradation(fp.loss, q.loss)["dq_rel"],
            f"monitor/dq_low/{label}": ci["low"], f"monitor/dq_high/{label}": ci["high"]}


class Monitor:
    """Evaluate ``cfg`` on ``eval_blocks`` ([n, T] token ids); ``calibration`` ([n, T], training split) for GPTQ
    and calibration predictors. Keeps :attr:`history` for the alert rules."""

    def __init__(self, cfg: MonitorConfig, eval_blocks: torch.Tensor, calibration: torch.Tensor | None = None):
        self.cfg, self.eval_blocks, self.calibration = cfg, eval_blocks, calibration
        self.rtn = [QuantSpec("rtn", b, cfg.group_size, cfg.sym) for b in cfg.bits]
        self.gptq = [QuantSpec("gptq", b, cfg.group_size, cfg.sym) for b in cfg.bits] if cfg.gptq_every else []
        self.history: list[MonitorResult] = []

    @classmethod
    def for_training(cls, cfg: MonitorConfig, data_cfg: DataConfig, tokenizer: Any, tok_fp: str) -> "Monitor":
        """The monitor of a training run: the first ``n_blocks`` validation blocks (a sweep's eval set with
        ``eval.n_blocks = n_blocks``) and, when needed, a sweep's calibration with ``n_samples = calib_samples``."""
        from .heldout import calibration, eval_blocks
        blocks = eval_blocks(cfg, data_cfg, tokenizer, tok_fp)
        calib = calibration(cfg, data_cfg, tokenizer, tok_fp) if needs_calibration(cfg) else None
        return cls(cfg, blocks, calib)

    def check(self, model: nn.Module) -> None:
        """Refuse, in one line and before any training step, what the first evaluation would fail on: no
        quantizable linear, a group wider than a layer, unknown predictors or alert metrics, missing
        calibration. ``model`` may be on the meta device."""
        from .predictors.base import check_predictors
        check_model(self.cfg, model)
        predictor_keys(self.cfg, self.rtn)
        check_predictors(self.cfg.predictors, self.calibration is not None, True)
        if self.gptq and self.calibration is None:
            from ..errors import ConfigError
            raise ConfigError("monitor.gptq_every needs calibration windows; build the monitor with "
                              "Monitor.for_training or pass calibration=")
        check_alerts(self.cfg, metric_keys(self.cfg, self.rtn, self.gptq))

    def due(self, step: int) -> bool:
        return step > 0 and step % self.cfg.every == 0

    def specs(self, step: int) -> list[QuantSpec]:
        """RTN always; GPTQ at every ``gptq_every``-th evaluation (counted from the step, so resume agrees)."""
        n = step // self.cfg.every
        return self.rtn + (self.gptq if self.gptq and n % self.cfg.gptq_every == 0 else [])

    def evaluate(self, model: nn.Module, step: int) -> MonitorResult:
        """Measure ``model`` now; leaves its weights, modes, the RNG states, grad mode and autocast as found."""
        t0 = time.perf_counter()
        with preserved(model):
            metrics = self._measure(model, step)
        metrics["monitor/seconds"] = time.perf_counter() - t0
        return self._record(step, metrics)

    def _measure(self, model: nn.Module, step: int) -> dict[str, float]:
        cfg, where = self.cfg, f"monitor at step {step}"
        fp = evaluate_loss(model, self.eval_blocks, cfg.batch_size, name=where)
        out = {"monitor/loss_fp": fp.loss}
        calib = CalibrationSet(self.calibration) if self.calibration is not None else None  # FP-only work shared
        for spec in self.specs(step):
            try:
                with quantized(model, spec, calib if spec.method != "rtn" else None):
                    q = evaluate_loss(model, self.eval_blocks, cfg.batch_size, name=f"{where}, {spec.label}")
            except NonFiniteLoss as e:  # a monitor must not stop training: say so and log nothing for it
                warnings.warn(f"monitor: {e}", QrobustWarning, stacklevel=4)
                continue
            out.update(variant_metrics(spec.label, fp, q, cfg.n_boot, cfg.confidence))
        if cfg.predictors:
            from .predictors import compute_predictors
            got = compute_predictors(model, cfg.predictors, self.rtn, self.calibration, self.eval_blocks,
                                     cache={("fp_loss", id(self.eval_blocks)): fp})
            out.update({f"monitor/pred/{k}": v for k, v in got.values.items()})
        return out

    def _record(self, step: int, metrics: dict[str, float]) -> MonitorResult:
        """Append to the history, fire the alert rules on it, warn once per fired rule."""
        res = MonitorResult(step, metrics, [], metrics.get("monitor/seconds", 0.0))
        self.history.append(res)
        fired = alerting.fired(self.cfg.alerts, [(r.step, r.metrics) for r in self.history])
        for a in fired:
            metrics[a.key] = a.rise
        res.alerts = [a.rule.metric for a in fired]
        alerting.warn(fired)
        return res

    def restore(self, lines: Sequence[Mapping[str, Any]]) -> None:
        """Rebuild :attr:`history` from step-log lines (a resumed run): every line with monitor metrics, in order.
        The alerts they recorded are kept as logged, not fired again."""
        self.history = []
        for ln in lines:
            m = {k: float(v) for k, v in ln.items() if k.startswith(alerting.PREFIX)}
            if m:
                fired = [k[len(alerting.ALERT_PREFIX):] for k in m if k.startswith(alerting.ALERT_PREFIX)]
                self.history.append(MonitorResult(int(ln["step"]), m, fired, m.get("monitor/seconds", 0.0)))
