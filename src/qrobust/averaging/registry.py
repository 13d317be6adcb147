"""Averagers by name, through a registry (name -> planner), like corpora in ``data/corpus.py``.

A planner turns the source trajectories and the averager's options (:class:`~qrobust.config.AverageConfig`)
into :class:`AverageJob` s: which checkpoints are averaged with which weights, and where the result sits.
Making them (streamed, with provenance) is the same for every averager (``run.py``). Adding an averager is
one module with one ``@register_averager("name")`` function, imported by ``averaging/__init__.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..registries import Registry
from ..config import AverageConfig
from ..trajectory import Checkpoint, Trajectory


@dataclass
class AverageJob:
    run: str  # name of the averaged run
    step: int
    inputs: list[Checkpoint]
    weights: list[float]
    like: Checkpoint  # whose metadata (tokens, phase, config files) the result carries
    params: dict[str, Any] = field(default_factory=dict)
    greedy: bool = False  # inputs are candidates; the kept ones are chosen when the soup is made
    across_runs: bool = False  # a mean over runs (a soup): the averaged run has no parent run

    @property
    def parent(self) -> str | None:
        """The run the averaged run is derived from (None for a mean across runs)."""
        return None if self.across_runs else self.like.run


Planner = Callable[[list[Trajectory], AverageConfig], list[AverageJob]]
AVERAGERS: Registry[Planner] = Registry("averager")
register_averager = AVERAGERS.register
planner = AVERAGERS.lookup
