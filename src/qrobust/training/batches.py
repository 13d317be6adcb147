"""The deterministic global batch of every step, and this rank's micro batches of it.

Step s trains on samples [s·B, (s+1)·B) of an endless stream of seeded per-epoch permutations of the
training blocks (B = the global batch). Rank r of W takes the r-th of W equal slices and cuts it into
``accum`` micro batches. The order of samples within the global batch never depends on W or on the
accumulation, so a run resumed with another world size sees the same batches, and the gradient of the
global batch is the same mean (up to float rounding) however it is cut.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.blocks import BlockSource
from .runtime import BatchLayout


@dataclass
class GlobalBatches:
    """Block indices of every step's global batch; only the permutations in use are kept in memory."""

    blocks: BlockSource
    batch_size: int
    seed: int
    _perms: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a step spans at most two epochs
                del self._perms[min(self._perms)]
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(len(self.blocks), generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        """Indices of the blocks of step ``step``'s global batch, in order."""
        n = len(self.blocks)
        return [int(self._perm(i // n)[i % n]) for i in range(step * self.batch_size, (step + 1) * self.batch_size)]

    def at(self, step: int) -> torch.Tensor:
        """The whole global batch ``[B, seq_len]`` (what one process trains on)."""
        return self.blocks.take(self.indices(step))

    def micro_batches(self, step: int, layout: BatchLayout, rank: int) -> list[torch.Tensor]:
        """Rank ``rank``'s ``layout.accum`` micro batches of step ``step``; only its own blocks are read."""
        idx = self.indices(step)
        mine = idx[rank * layout.per_rank: (rank + 1) * layout.per_rank]
        if layout.accum == 1:
            return [self.blocks.take(mine)]
        rows = self.blocks.take(mine)
        return list(rows.split(layout.micro))
