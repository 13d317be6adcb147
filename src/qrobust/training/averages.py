"""Averaged weights kept while training (EMA per step, LAWA over snapshots), saved beside the raw ones.

- EMA (β): a debiased exponential moving average over the weights after every optimizer step,
  ê_t = Σ_{i≤t} (1 − β)·β^(t−i)·θ_i / (1 − β^t). Debiasing (as Adam does for its moments) keeps the
  random initialisation out of the average, so early EMA checkpoints are usable.
- LAWA (window L, every k): the uniform mean of the last L snapshots θ_s taken at steps s ≡ 0 (mod k).
  An averaged checkpoint is written only once L snapshots exist (as the offline LAWA does).

Only parameters are averaged; buffers (not trained) are saved as the raw model's. All accumulation is fp32. The state (EMA accumulator and update count, LAWA snapshots) goes into the raw
checkpoint folder (``averaging.safetensors`` + ``averaging`` in ``qrobust_state.json``) so a resumed run,
and a cooldown branch started from that checkpoint, continues exactly; cost on disk: one fp32 model per
EMA plus L per LAWA, in every checkpoint folder.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file

from ..config import TrainAverageConfig
from ..errors import CheckpointError
from ..io.files import AVERAGING_FILE


class RunningAverages:
    """The averages of one model during training; one instance per trained run segment."""

    def __init__(self, specs: list[TrainAverageConfig], checkpoint_every: int, model: torch.nn.Module):
        self.specs = {s.suffix(checkpoint_every): s for s in specs}
        self.every = {n: s.every or checkpoint_every for n, s in self.specs.items() if s.kind == "lawa"}
        self.names = [n for n, _ in model.named_parameters()]
        self.ema: dict[str, list[torch.Tensor]] = {}
        self.count: dict[str, int] = {}
        self.snaps: dict[str, list[tuple[int, list[torch.Tensor]]]] = {}
        for n, s in self.specs.items():
            if s.kind == "ema":
                self.ema[n] = [torch.zeros_like(p, dtype=torch.float32) for p in model.parameters()]
                self.count[n] = 0
            else:
                self.snaps[n] = []

    def __bool__(self) -> bool:
        return bool(self.specs)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """After the optimizer step that produced the weights of ``step``."""
        params = [p.detach() for p in model.parameters()]
        for n, s in self.specs.items():
            if s.kind == "ema":
                torch._foreach_mul_(self.ema[n], s.beta)
                torch._foreach_add_(self.ema[n], [p.float() for p in params], alpha=1 - s.beta)
                self.count[n] += 1
            elif step % self.every[n] == 0:
                q = self.snaps[n]
                q.append((step, [p.float().clone() for p in params]))
                del q[: max(0, len(q) - s.window)]

    def averaged(self, name: str) -> list[torch.Tensor] | None:
        """Current averaged parameters of ``name`` (fp32), or None while it is not defined yet."""
        s = self.specs[name]
        if s.kind == "ema":
            t = self.count[name]
            if t == 0:
                return None
            return [e / (1 - s.beta ** t) for e in self.ema[name]]
        q = self.snaps[name]
        if len(q) < s.window:
            return None
        out = [torch.zeros_like(p) for p in q[0][1]]
        for _, ps in q:
            torch._foreach_add_(out, ps, alpha=1 / s.window)
        return out

    def info(self, name: str) -> dict[str, Any]:
        """What the averaged checkpoint's state records about how it was made."""
        s = self.specs[name]
        if s.kind == "ema":
            return {"kind": "ema", "beta": s.beta, "updates": self.count[name], "debiased": True}
        return {"kind": "lawa", "window": s.window, "every": self.every[name],
                "snapshot_steps": [st for st, _ in self.snaps[name]]}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON metadata that restore this object exactly."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for n in self.specs:
            if n in self.ema:
                tensors.update({f"{n}/ema/{k}": t for k, t in zip(self.names, self.ema[n])})
                meta[n] = {"kind": "ema", "count": self.count[n]}
            else:
                for i, (_, ps) in enumerate(self.snaps[n]):
                    tensors.update({f"{n}/{i}/{k}": t for k, t in zip(self.names, ps)})
                meta[n] = {"kind": "lawa", "steps": [st for st, _ in self.snaps[n]]}
        return tensors, meta

    def restore(self, folder: Path, meta: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's saved state (resume, or a branch starting at it)."""
        meta = meta or {}
        missing = [n for n in self.specs if n not in meta]
        if missing:
            raise CheckpointError(f"checkpoint '{folder}' has no saved state for averaging '{missing[0]}', so it "
                                  "cannot be continued exactly; branch from a checkpoint trained with it")
        tensors = load_file(str(Path(folder) / AVERAGING_FILE)) if self.specs else {}
        for n in self.specs:
            if n in self.ema:
                self.ema[n] = [tensors[f"{n}/ema/{k}"] for k in self.names]
                self.count[n] = int(meta[n]["count"])
            else:
                self.snaps[n] = [(st, [tensors[f"{n}/{i}/{k}"] for k in self.names])
                                 for i, st in enumerate(meta[n]["steps"])]

    def relayout(self, refs: list[torch.Tensor], place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Lay every kept tensor out like the parameter it averages (``place(tensor, parameter)``): on its
        device, sharded like it under FSDP. Restored state arrives whole and on the host."""
        for n in self.ema:
            self.ema[n] = [place(t, r) for t, r in zip(self.ema[n], refs)]
        for n in self.snaps:
            self.snaps[n] = [(st, [place(t, r) for t, r in zip(ps, refs)]) for st, ps in self.snaps[n]]


@contextlib.contextmanager
def swapped_parameters(model: torch.nn.Module, values: list[torch.Tensor]) -> Iterator[torch.nn.Module]:
    """The model with its parameters temporarily replaced (no copies of the originals are made)."""
    params = list(model.parameters())
    originals = [p.data for p in params]
    try:
        for p, v in zip(params, values):
            p.data = v.to(p.device, p.dtype)
        yield model
    finally:
        for p, o in zip(params, originals):
            p.data = o
