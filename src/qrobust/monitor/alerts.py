"""Alerts: a monitored metric that rose too much over the last few evaluations.

Rule (:class:`~qrobust.config.AlertRule`): at evaluation i of the metric's series (the evaluations that
logged it: a GPTQ metric exists only every ``gptq_every``-th time), fire when
(v_i − v_{i−window}) / |v_{i−window}| > rise_pct / 100. The series is rebuilt from the step log on resume,
so a resumed run fires exactly the alerts an uninterrupted one fires.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..config import AlertRule
from ..errors import QrobustWarning

PREFIX = "monitor/"
ALERT_PREFIX = "monitor/alert/"


@dataclass(frozen=True)
class Alert:
    """One fired rule: the metric, the relative rise (a fraction), the two values and steps compared."""

    rule: AlertRule
    rise: float
    old: float
    new: float
    old_step: int
    step: int

    @property
    def key(self) -> str:
        return ALERT_PREFIX + self.rule.metric

    @property
    def message(self) -> str:
        r = self.rule
        return (f"monitor: {r.metric} rose by {self.rise:.1%} over the last {r.window} evaluation(s) "
                f"({self.old:.6g} at step {self.old_step} -> {self.new:.6g} at step {self.step}; "
                f"the rule is > {r.rise_pct:g}%)")


def series(history: Sequence[tuple[int, Mapping[str, float]]], metric: str) -> list[tuple[int, float]]:
    """(step, value) of ``metric`` (without the prefix) at every evaluation that logged a finite value."""
    key = PREFIX + metric
    return [(s, float(m[key])) for s, m in history if key in m and math.isfinite(float(m[key]))]


def rise(old: float, new: float) -> float | None:
    """(new − old) / |old|; None when ``old`` is 0 (no relative change is defined)."""
    return None if old == 0 else (new - old) / abs(old)


def fired(rules: Sequence[AlertRule], history: Sequence[tuple[int, Mapping[str, float]]]) -> list[Alert]:
    """The rules that fire at the last evaluation of ``history`` ((step, metrics) in step order, the current
    evaluation last); a rule fires only when its metric was logged at that evaluation."""
    if not history:
        return []
    out = []
    last = history[-1][0]
    for r in rules:
        s = series(history, r.metric)
        if len(s) <= r.window or s[-1][0] != last:
            continue
        (s0, v0), (s1, v1) = s[-1 - r.window], s[-1]
        x = rise(v0, v1)
        if x is not None and x > r.rise_pct / 100:
            out.append(Alert(r, x, v0, v1, s0, s1))
    return out


def warn(alerts: Sequence[Alert]) -> None:
    """One warning line per fired rule (the project's warning class: the CLI prints it as one line)."""
    for a in alerts:
        warnings.warn(a.message, QrobustWarning, stacklevel=3)
