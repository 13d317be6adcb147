"""What every checkpoint group of one sweep worker shares: the config, trajectory, block sets, store,
the summary it counts into and the progress bar."""
from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..config import SweepConfig
from ..results.store import Store
from ..trajectory import Trajectory
from .sets import BlockSets
from .summary import SweepSummary


@dataclass
class Context:
    cfg: SweepConfig
    traj: Trajectory
    sets: BlockSets
    store: Store
    summary: SweepSummary
    bar: tqdm
    progress: bool = True

    def wrote(self, key: str) -> None:
        """Count one variant record written (and its step on the progress bar)."""
        self.summary.records_written += 1
        self.summary.new_keys.append(key)
        self.bar.update(1)
