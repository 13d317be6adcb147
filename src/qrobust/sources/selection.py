"""Which checkpoints of a trajectory to keep: the ``?every=N&steps=A,B&max=N&run=NAME`` part of a spec."""
from __future__ import annotations

import builtins
from typing import Any

from ..errors import ConfigError
from ..trajectory import Trajectory

INT_KEYS = ("every", "max")
TEXT_KEYS = ("run", "step_pattern")


def parse_query(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key in INT_KEYS:
            try:
                out[key] = int(value)
            except ValueError:
                raise ConfigError(f"trajectory selection '{key}' needs an integer, got '{value}'") from None
        elif key == "steps":
            try:
                out[key] = [int(v) for v in value.split(",") if v]
            except ValueError:
                raise ConfigError(f"trajectory selection 'steps' needs integers, got '{value}'") from None
        elif key in TEXT_KEYS:
            out[key] = value
        else:
            raise ConfigError(f"unknown trajectory selection '{key}'; known: every, steps, max, run, step_pattern")
    return out


def select(traj: Trajectory, every: int | None = None, steps: list[int] | None = None, max: int | None = None,
           run: str | None = None) -> Trajectory:
    """A subset of the checkpoints, order kept: by run, by step list, every N steps, or the N nearest to
    evenly spaced steps."""
    cks = list(traj.checkpoints)
    if run is not None:
        cks = [c for c in cks if c.run == run]
    if steps is not None:
        wanted = set(steps)
        cks = [c for c in cks if c.step in wanted]
    if every is not None:
        if every < 1:
            raise ConfigError("trajectory selection 'every' must be >= 1")
        last = {c.run: c.step for c in cks}
        cks = [c for c in cks if c.step % every == 0 or c.step == last[c.run]]
    if max is not None and len(cks) > max:
        if max < 1:
            raise ConfigError("trajectory selection 'max' must be >= 1")
        lo, hi = min(c.step for c in cks), builtins.max(c.step for c in cks)
        targets = [lo + i * (hi - lo) / (max - 1) for i in range(max)] if max > 1 else [hi]
        chosen: list[int] = []
        for t in targets:  # the checkpoint nearest to each evenly spaced step (earlier wins a tie)
            free = [i for i in range(len(cks)) if i not in chosen]
            chosen.append(min(free, key=lambda i: (abs(cks[i].step - t), i)))
        cks = [cks[i] for i in sorted(chosen)]
    if not cks:
        raise ConfigError(f"the selection leaves no checkpoint of '{traj.name}' ({len(traj)} before selecting)")
    return Trajectory(name=traj.name, checkpoints=cks, runs=traj.runs, data=traj.data, source=traj.source,
                      config=traj.config, provenance=traj.provenance)
