"""Where layer streaming keeps the hidden states it carries from block to block.

Every stream (the FP evaluation stream, one quantized stream per variant, one calibration stream per
calibrated variant) holds, per batch, the hidden states entering the next decoder block. For a big
model and a long evaluation set these outgrow the compute device, and then host memory: 64 blocks of
2048 tokens of a 8192-wide model are 4.3 GB per fp32 stream. So a stream lives in one of three tiers:

- ``device``: on the compute device (fastest; on a CPU this is host memory);
- ``cpu``: in host memory, each batch copied to the GPU when its block runs;
- ``disk``: one raw file per batch in a private folder, read back when its block runs.

The other arguments of a block (rotary position embeddings, masks, position ids) depend only on the
batch, not on the stream, so they stay on the device and are shared. Copies are exact (bytes in, bytes
out), so every tier gives the same numbers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from ....errors import ConfigError, write_error
from ....leftovers import clean, tag

Tier = Literal["device", "cpu", "disk"]
TIERS: tuple[str, ...] = ("auto", "device", "cpu", "disk")
HEADROOM = 0.5  # states may take at most this share of the memory free when streaming starts


def host_available_bytes() -> int:
    """Host memory available to new allocations (Linux MemAvailable; physical free pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_available_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device; None for the CPU (host memory is the device)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def choose_tier(need_bytes: int, device: torch.device, free_device: int | None, free_host: int) -> Tier:
    """The fastest tier whose free memory holds ``need_bytes`` of states within the headroom."""
    if device.type != "cpu" and free_device is not None and need_bytes <= HEADROOM * free_device:
        return "device"
    if need_bytes <= HEADROOM * free_host:
        return "device" if device.type == "cpu" else "cpu"
    return "disk"


def resolve_tier(tier: str, need_bytes: int, device: torch.device) -> Tier:
    """``auto`` decided from the memory free now; ``cpu`` on a CPU device is the device."""
    if tier not in TIERS:
        raise ConfigError(f"unknown states tier '{tier}': use one of {', '.join(TIERS)}")
    if tier == "auto":
        return choose_tier(need_bytes, device, device_available_bytes(device), host_available_bytes())
    if tier == "cpu" and device.type == "cpu":
        return "device"
    return tier  # type: ignore[return-value]


_CLEANED: set[Path] = set()


class HiddenStates:
    """One stream's per-batch inputs of the next decoder block, held in one tier. Indexing gives the
    block's (args, kwargs) on the compute device, so it reads like the in-memory list of inputs."""

    def __init__(self, tier: Tier, device: torch.device, folder: Path | None = None,
                 shared: list[tuple[tuple, dict]] | None = None):
        self.tier, self.device = tier, device
        self._shared: list[tuple[tuple, dict]] = shared if shared is not None else []
        self._held: list[torch.Tensor | None] = [None] * len(self._shared)
        self._meta: list[tuple[torch.dtype, tuple[int, ...]] | None] = [None] * len(self._shared)
        self._folder: Path | None = None
        if tier == "disk":
            base = folder if folder is not None else Path(tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            if base not in _CLEANED:  # state folders of killed streams (dead pid here, or a day old), once
                clean(base, recursive=False)
                _CLEANED.add(base)
            self._folder = Path(tempfile.mkdtemp(prefix=f"qrobust-states-{tag()}-", dir=base))

    def append(self, args: tuple, kwargs: dict) -> None:
        """One more batch, from a block's captured (args, kwargs): the hidden states (``args[0]``) go to
        the tier, the rest is kept on the device as shared arguments."""
        self._shared.append((tuple(args[1:]), kwargs))
        self._held.append(None)
        self._meta.append(None)
        self.put(len(self._shared) - 1, args[0])

    def copy(self) -> "HiddenStates":
        """The same states in a new stream of this tier (a quantized stream starts as the FP one)."""
        twin = HiddenStates(self.tier, self.device, self._folder.parent if self._folder is not None else None,
                            self._shared)
        for j in range(len(self)):
            twin.put(j, self._held[j] if self.tier != "disk" else self.hidden(j))
        return twin

    def __len__(self) -> int:
        return len(self._shared)

    def put(self, j: int, h: torch.Tensor) -> None:
        if self.tier == "device":
            self._held[j] = h
        elif self.tier == "cpu":
            self._held[j] = h.to("cpu")
        else:
            assert self._folder is not None
            self._meta[j] = (h.dtype, tuple(h.shape))
            raw = h.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            tmp = self._folder / f"{j}.tmp"
            try:
                with tmp.open("wb") as f:
                    f.write(memoryview(raw))
                os.replace(tmp, self._folder / f"{j}.bin")
            except OSError as e:  # the disk tier filled its disk: one line naming the folder (it is removed on close)
                raise write_error(e, self._folder, "hidden states (disk tier)") from None

    def hidden(self, j: int) -> torch.Tensor:
        """Batch ``j``'s hidden states on the compute device."""
        if self.tier == "disk":
            assert self._folder is not None and self._meta[j] is not None
            dtype, shape = self._meta[j]
            buf = bytearray((self._folder / f"{j}.bin").read_bytes())
            h = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape) if buf else torch.empty(
                shape, dtype=dtype)
            return h.to(self.device)
        h = self._held[j]
        assert h is not None
        return h.to(self.device)

    def __getitem__(self, j: int) -> tuple[tuple, dict]:
        rest, kwargs = self._shared[j]
        return (self.hidden(j),) + rest, kwargs

    def __iter__(self) -> Iterator[tuple[tuple, dict]]:
        return (self[j] for j in range(len(self)))

    def advance(self, block: nn.Module) -> bool:
        """Run ``block`` on every batch and keep its outputs as the next block's inputs; returns whether
        the block answers with a tuple (what the replay of the last states must imitate)."""
        as_tuple = False
        for j in range(len(self)):
            args, kwargs = self[j]
            out = block(*args, **kwargs)
            as_tuple = isinstance(out, (tuple, list))
            self.put_output(j, out)
        return as_tuple

    def put_output(self, j: int, out: Any) -> None:
        """Batch ``j``'s hidden states from a block's output (a tensor, or a tuple led by one)."""
        self.put(j, out[0] if isinstance(out, (tuple, list)) else out)

    def put_all(self, outs: list[Any]) -> None:
        for j, o in enumerate(outs):
            self.put_output(j, o)

    def close(self) -> None:
        """Drop the states (and their folder)."""
        self._held = [None] * len(self._held)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self) -> None:
        if getattr(self, "_folder", None) is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def state_bytes(n_tokens: int, hidden: int, dtype: torch.dtype) -> int:
    """Bytes of one stream's states: every token's hidden vector."""
    return n_tokens * hidden * torch.empty((), dtype=dtype).element_size()
