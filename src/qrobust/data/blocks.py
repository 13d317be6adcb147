"""Document splits, fixed-length block packing and the seeded calibration sampler."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ..errors import DataError


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split by document (never inside one): a seeded shuffle, the first ``ceil``-ish share to validation."""
    if len(docs) < 2:
        raise DataError(f"corpus has {len(docs)} document(s); at least 2 are needed to split train/validation "
                        "by document (a single text file is split at blank lines)")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    val = [docs[i] for i in order[:n_val]]
    train = [docs[i] for i in order[n_val:]]
    return train, val


def pack_blocks(stream: torch.Tensor, seq_len: int, what: str = "corpus") -> torch.Tensor:
    """Non-overlapping ``[n, seq_len]`` blocks from a token stream; the incomplete tail is dropped."""
    n = stream.numel() // seq_len
    if n == 0:
        raise DataError(f"{what} has {stream.numel()} tokens, shorter than one block of {seq_len}; "
                        "use more text or a smaller seq_len")
    return stream[: n * seq_len].view(n, seq_len).clone()


def take_blocks(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` blocks (all if fewer): evaluation sets are prefixes, so they nest as n grows."""
    return blocks[: min(n, blocks.shape[0])]


def calibration_starts(n_tokens: int, n_samples: int, seq_len: int, seed: int) -> list[int]:
    """Seeded window offsets into a stream of ``n_tokens`` (in memory or on disk: the same windows)."""
    if n_tokens <= seq_len:
        raise DataError(f"calibration corpus has {n_tokens} tokens, not more than one window of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - seq_len, (n_samples,), generator=g).tolist()


def calibration_blocks(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at seeded random offsets (as GPTQ's reference sampler)."""
    starts = calibration_starts(stream.numel(), n_samples, seq_len, seed)
    return torch.stack([stream[s: s + seq_len] for s in starts])


class BlockSource(Protocol):
    """Training blocks addressed by index, in memory (:class:`TensorBlocks`) or memory-mapped token shards:
    the batch order is a function of indices only, so both give the same batches from the same tokens."""

    seq_len: int

    def __len__(self) -> int: ...

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """int64 ``[len(indices), seq_len]`` blocks, in the order asked."""
        ...


@dataclass
class TensorBlocks:
    """Blocks held in memory as one ``[n, seq_len]`` tensor (the corpus a run tokenized itself)."""

    blocks: torch.Tensor

    @property
    def seq_len(self) -> int:
        return int(self.blocks.shape[1])

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        return self.blocks[list(indices)]
