"""Reading a token shard folder (:mod:`.shard_format`) without loading it: every split is one stream over its
files, opened on first use and read by ranges into buffers of the size asked, so memory does not grow with
the corpus."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch

from ..errors import DataError
from .blocks import calibration_starts
from .shard_format import SPLITS, TOKENIZER_DIR, read_manifest, shard_set_id


class ShardStream:
    """One split's token files as one concatenated stream, read by ranges.

    Reads go through ``pread``-style file reads into a buffer of the size asked, not through ``np.memmap``:
    a memory map's pages stay in the process's resident set once touched, and the kernel maps whole
    read-ahead folios (measured: ~1.5 MB resident per random 256-byte block read, so RSS grows with the
    corpus as training visits it). A read costs one system call per file it touches."""

    def __init__(self, folder: Path, split: dict[str, Any], dtype: str):
        self.paths = [folder / f["tokens"] for f in split["files"]]
        sizes = np.array([f["n_tokens"] for f in split["files"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])  # file k holds [starts[k], starts[k+1])
        self.dtype = np.dtype(dtype)
        self._files: dict[int, BinaryIO] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def opened(self) -> list[int]:
        """The files opened so far (lazily, on first read)."""
        return sorted(self._files)

    def _file(self, k: int) -> BinaryIO:
        if k not in self._files:
            p = self.paths[k]
            want = int(self.starts[k + 1] - self.starts[k]) * self.dtype.itemsize
            if not p.is_file() or p.stat().st_size != want:
                raise DataError(f"token shard '{p}' is missing or not the size its manifest records; re-run "
                                "'qrobust data prepare' with the same settings into a new folder")
            self._files[k] = open(p, "rb", buffering=0)
        return self._files[k]

    def _read_file(self, k: int, lo: int, n: int) -> np.ndarray:
        """Tokens ``[lo, lo + n)`` of file ``k``."""
        buf = np.empty(n, dtype=self.dtype)
        f = self._file(k)
        f.seek(lo * self.dtype.itemsize)
        if f.readinto(memoryview(buf).cast("B")) != buf.nbytes:
            raise DataError(f"token shard '{self.paths[k]}' ended early (changed while reading?); re-run "
                            "'qrobust data prepare' into a new folder")
        return buf

    def read(self, start: int, length: int) -> np.ndarray:
        """int64 tokens ``[start, start + length)`` of the stream (may span files)."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) are outside the stream of {len(self)}")
        out = np.empty(length, dtype=np.int64)
        pos, end = start, start + length
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < end:
            lo, hi = pos - int(self.starts[k]), min(end, int(self.starts[k + 1])) - int(self.starts[k])
            out[pos - start: pos - start + hi - lo] = self._read_file(k, lo, hi - lo)
            pos += hi - lo
            k += 1
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def windows(self, starts: Sequence[int], length: int) -> torch.Tensor:
        """int64 ``[len(starts), length]``: the windows of the stream at ``starts``."""
        out = np.empty((len(starts), length), dtype=np.int64)
        for i, s in enumerate(starts):
            out[i] = self.read(int(s), length)
        return torch.from_numpy(out)


class ShardBlocks:
    """Training blocks of a shard split: block ``i`` is tokens ``[i*seq_len, (i+1)*seq_len)`` of the stream,
    the incomplete tail dropped (as :func:`~.blocks.pack_blocks` of the concatenated stream)."""

    def __init__(self, stream: ShardStream, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self.n = len(stream) // seq_len
        if self.n == 0:
            raise DataError(f"the shards' training split has {len(stream)} tokens, shorter than one block of "
                            f"{seq_len}; use a larger corpus or a smaller seq_len")

    def __len__(self) -> int:
        return self.n

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        idx = [int(i) for i in indices]
        if idx and not (0 <= min(idx) and max(idx) < self.n):
            raise IndexError(f"block index out of range [0, {self.n})")
        return self.stream.windows([i * self.seq_len for i in idx], self.seq_len)


class TokenShards:
    """A complete shard folder: its manifest, tokenizer and split streams."""

    def __init__(self, folder: str | Path, trust_remote_code: bool = False):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.trust_remote_code = trust_remote_code

    @property
    def fingerprint(self) -> str:
        """The tokenizer's fingerprint (:func:`~.tokenizer.tokenizer_fingerprint` of its folder)."""
        return str(self.manifest["tokenizer"]["fingerprint"])

    @property
    def id(self) -> str:
        return shard_set_id(self.manifest)

    @property
    def tokenizer_folder(self) -> Path:
        return self.folder / TOKENIZER_DIR

    @cached_property
    def tokenizer(self) -> Any:
        from .tokenizer import load_tokenizer
        return load_tokenizer(self.tokenizer_folder, self.trust_remote_code)

    def stream(self, split: str) -> ShardStream:
        if split not in SPLITS:
            raise DataError(f"shards have no split '{split}' (splits: {', '.join(SPLITS)})")
        return ShardStream(self.folder, self.manifest["splits"][split], self.manifest["dtype"])

    def train_blocks(self, seq_len: int) -> ShardBlocks:
        return ShardBlocks(self.stream("train"), seq_len)

    def val_tokens(self, limit: int | None = None) -> torch.Tensor:
        """The validation stream (its first ``limit`` tokens when given) as int64."""
        s = self.stream("val")
        n = len(s) if limit is None else min(limit, len(s))
        return torch.from_numpy(s.read(0, n))

    def calibration_windows(self, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
        """:func:`~.blocks.calibration_blocks` of the train stream, read without loading it."""
        s = self.stream("train")
        return s.windows(calibration_starts(len(s), n_samples, seq_len, seed), seq_len)


def open_shards(path: str | Path, trust_remote_code: bool = False) -> TokenShards:
    """The shard folder written by ``qrobust data prepare`` (one DataError line when it is not one)."""
    return TokenShards(path, trust_remote_code)
