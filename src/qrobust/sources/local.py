"""A bare path: a qrobust run folder (its ``trajectory.json``) or one Hugging Face checkpoint folder."""
from __future__ import annotations

from ..trajectory import Trajectory, load_trajectory
from .registry import LOCAL, SourceSpec, register_source


@register_source(LOCAL)
def local_source(spec: SourceSpec) -> Trajectory:
    return load_trajectory(spec.target)
