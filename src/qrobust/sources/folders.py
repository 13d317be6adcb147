"""``folders:GLOB`` (or any path with * ? [): local checkpoint folders; step = the last integer of the
folder name, or the first group of ``step_pattern``."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError
from ..names import file_stem
from ..trajectory import Checkpoint, Trajectory
from .registry import SourceSpec, register_source


def _step(name: str, rx: re.Pattern[str] | None, step_pattern: str | None) -> int:
    m = rx.search(name) if rx else re.search(r"(\d+)(?!.*\d)", name)
    if m is None:
        how = f"step_pattern '{step_pattern}'" if rx else "a number"
        raise CheckpointError(f"cannot read a step from folder name '{name}' (expected {how}); "
                              "set step_pattern to a regex whose first group is the step")
    return int(m.group(1) if m.groups() else m.group(0))


@register_source("folders")
def folders_source(spec: SourceSpec) -> Trajectory:
    pattern, step_pattern = spec.target, spec.step_pattern
    root = Path(pattern).anchor or "."
    rel = str(Path(pattern).relative_to(root)) if Path(pattern).is_absolute() else pattern
    dirs = sorted(p for p in Path(root).glob(rel) if p.is_dir() and (p / "config.json").is_file())
    if not dirs:
        raise CheckpointError(f"no checkpoint folders (with config.json) match '{pattern}'")
    rx = re.compile(step_pattern) if step_pattern else None
    cks = [Checkpoint(name=d.name, path=str(d.resolve()), step=_step(d.name, rx, step_pattern)) for d in dirs]
    cks.sort(key=lambda c: c.step)
    steps = [c.step for c in cks]
    if len(set(steps)) != len(steps):
        dup = next(s for s in steps if steps.count(s) > 1)
        raise CheckpointError(f"two folders matching '{pattern}' have step {dup}; narrow the glob or fix step_pattern")
    return Trajectory(name=file_stem(Path(pattern).parent.name, "folders"), checkpoints=cks)
