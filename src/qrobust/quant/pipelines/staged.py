"""Run one decoder block over the calibration set in stages, computing each submodule output once.

GPTQ quantizes a block group by group (true-sequential): the Hessian of group s needs the block's
forward up to group s's input, with groups < s already quantized. Re-running the whole block for every
group would cost one block forward per group. Instead each stage stops at the next group's input and
keeps what can no longer change:

- a submodule that finished while every selected linear executed before it was already quantized
  ("clean") is replayed from its cached output in later stages;
- a submodule whose output *is* its last linear's output (attention → o_proj, MLP → down_proj) is
  recomputed as that linear applied to its cached clean input, skipping the attention inside; what
  runs inside such a module is therefore never cached.

Cleanliness is judged by execution order (conservative: anything run after an unquantized linear is
treated as dependent on it). Kept tensors are not copied (copies cost as much as the small ops they
save); instead their version counters are recorded, and a tensor edited in place by model code is
never replayed: the module runs normally instead. Submodules called more than once per forward are
never cached.
Identity of tensors (not values) decides input groups and tails; probe tensors stay alive until the
analysis is done so a freed tensor's address cannot be reused by an unrelated one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a pre-hook to end a forward pass early (the rest of the block is not needed yet)."""


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


class _Kept:
    """A tensor (or tuple of them) kept without copying, with version counters to detect in-place edits."""

    __slots__ = ("obj", "versions")

    def __init__(self, obj: Any):
        self.obj = obj
        self.versions = tuple(t._version for t in _tensors(obj))

    def intact(self) -> bool:
        return self.versions == tuple(t._version for t in _tensors(self.obj))


def _cacheable(obj: Any) -> bool:
    if obj is None or isinstance(obj, torch.Tensor):
        return True
    return type(obj) in (tuple, list) and all(_cacheable(o) for o in obj)


@dataclass
class BlockProbe:
    """What one watched forward of a block tells: input groups, tails, and modules run exactly once."""

    groups: list[list[str]]  # linear names in execution order, grouped by identical input tensor
    tails: dict[nn.Module, tuple[nn.Linear, int]] = field(default_factory=dict)  # module -> (its last linear, tuple len or -1)
    once: set[nn.Module] = field(default_factory=set)


def probe_block(block: nn.Module, linears: dict[str, nn.Linear], run_one: Callable[[], Any]) -> BlockProbe:
    """Watch one forward (``run_one``) of ``block`` and derive groups, tails and single-call modules."""
    subs = [m for m in block.modules() if m is not block]
    calls: dict[nn.Module, int] = {}
    outputs: dict[nn.Module, Any] = {}
    seen: list[tuple[str, torch.Tensor]] = []
    lin_out: dict[nn.Linear, torch.Tensor] = {}
    name_of = {lin: n for n, lin in linears.items()}

    def on_exit(mod, inp, out):
        calls[mod] = calls.get(mod, 0) + 1
        outputs[mod] = out
        if mod in name_of:
            seen.append((name_of[mod], inp[0]))
            lin_out[mod] = out

    handles = [m.register_forward_hook(on_exit) for m in subs]
    try:
        run_one()
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last: torch.Tensor | None = None
    for n, x in seen:
        if any(n in g for g in groups):
            continue
        if last is not None and x is last:
            groups[-1].append(n)
        else:
            groups.append([n])
            last = x
    missing = [n for n in linears if not any(n in g for g in groups)]
    if missing:
        groups.append(missing)  # never called during calibration: reported as such when quantized
    once = {m for m, c in calls.items() if c == 1 and _cacheable(outputs[m])}
    tails: dict[nn.Module, tuple[nn.Linear, int]] = {}
    for mod in once:
        if mod in name_of:
            continue
        out = outputs[mod]
        if isinstance(out, torch.Tensor):
            head, shape = out, -1
        elif type(out) is tuple and out and all(o is None for o in out[1:]):
            head, shape = out[0], len(out)
        else:
            continue
        for lin in mod.modules():
            if lin in name_of and lin in once and lin_out.get(lin) is head:
                tails[mod] = (lin, shape)
    return BlockProbe(groups=groups, tails=tails, once=once)


class StagedBlock:
    """One block, its per-batch inputs, and the caches that carry over between stages."""

    def __init__(self, block: nn.Module, inputs: list[tuple[tuple, dict]], linears: dict[str, nn.Linear],
                 probe: BlockProbe, replay: bool = True):
        self.block, self.inputs, self.linears, self.probe = block, inputs, linears, probe
        self.replay = replay
        self.quantized: set[nn.Linear] = set()
        self.cache: dict[nn.Module, dict[int, _Kept]] = {}
        self.tail_inputs: dict[nn.Linear, dict[int, _Kept]] = {}
        self._tail_linears = {lin for lin, _ in probe.tails.values()}
        # inside a module with a tail, outputs are never read again: once its tail linear is quantized
        # the whole module is recomputed from the tail's input, and before that it is still dirty
        inner = {sub for mod in probe.tails for sub in mod.modules() if sub is not mod}
        self._cached_kinds = probe.once - inner

    def mark_quantized(self, names: list[str]) -> None:
        self.quantized.update(self.linears[n] for n in names)

    def run(self, collect: dict[str, Callable[[torch.Tensor], None]], stop_at: str | None,
            sink: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Forward every batch; ``collect[name](x)`` sees each input of that linear; stop at ``stop_at``'s input.

        Returns the block outputs (``None`` for batches that stopped early); with ``sink``, each output is
        handed to ``sink(batch, output)`` instead and not kept (``None`` in the list).
        """
        state = {"b": 0, "dirty": False}
        handles, patched = self._install(*self._hooks(collect, stop_at, state), state)
        outs: list[Any] = []
        try:
            for b, (args, kwargs) in enumerate(self.inputs):
                state["b"], state["dirty"] = b, False
                try:
                    out = self.block(*args, **kwargs)
                except StopForward:
                    out = None
                if sink is not None and out is not None:
                    sink(b, out)
                    out = None
                outs.append(out)
        finally:
            for h in handles:
                h.remove()
            for mod, prev in patched:
                if prev is None:
                    del mod.forward
                else:
                    mod.forward = prev
        self._prune()
        return outs

    def _hooks(self, collect: dict[str, Callable[[torch.Tensor], None]], stop_at: str | None,
               state: dict[str, Any]) -> tuple[Callable, Callable]:
        """The pre-hook of every linear (collect, keep tail inputs, stop, mark dirty) and the post-hook
        that keeps clean outputs."""
        selected = set(self.linears.values())
        stop = self.linears[stop_at] if stop_at is not None else None
        by_module = {self.linears[n]: fn for n, fn in collect.items()}

        def pre(mod, args):
            x = args[0]
            if mod in by_module:
                by_module[mod](x)
            if self.replay and mod in self._tail_linears and not state["dirty"]:
                per = self.tail_inputs.setdefault(mod, {})
                if state["b"] not in per:
                    per[state["b"]] = _Kept(x)
            if mod is stop:
                raise StopForward
            if mod in selected and mod not in self.quantized:
                state["dirty"] = True

        def post(mod, args, out):
            if not state["dirty"] and mod in self.probe.once:
                per = self.cache.setdefault(mod, {})
                if state["b"] not in per:
                    per[state["b"]] = _Kept(out)
        return pre, post

    def _install(self, pre: Callable, post: Callable, state: dict[str, Any]) -> tuple[list, list]:
        """Hooks on the block's submodules and replaying forwards on the cached ones; what undoes them."""
        handles, patched = [], []
        for mod in self.block.modules():
            if mod is self.block:
                continue
            if isinstance(mod, nn.Linear):
                handles.append(mod.register_forward_pre_hook(pre))
            if self.replay and mod in self._cached_kinds:
                handles.append(mod.register_forward_hook(post))
                if mod in self.cache or mod in self.probe.tails:
                    patched.append((mod, mod.__dict__.get("forward")))
                    mod.forward = self._replayer(mod, mod.forward, state)
        return handles, patched

    def _replayer(self, mod: nn.Module, original: Callable, state: dict[str, Any]) -> Callable:
        """``mod``'s forward that answers from the cache, or from its tail linear on the cached clean input."""
        tail = self.probe.tails.get(mod)

        def forward(*args, **kwargs):
            b = state["b"]
            hit = self.cache.get(mod, {}).get(b)
            if hit is not None and hit.intact():
                return hit.obj
            x = self.tail_inputs.get(tail[0], {}).get(b) if tail is not None else None
            if x is not None and tail[0] in self.quantized and x.intact():
                y = tail[0].forward(x.obj)
                return y if tail[1] < 0 else (y,) + (None,) * (tail[1] - 1)
            if hit is not None:  # edited in place since: recompute, and keep the fresh result
                del self.cache[mod][b]
            return original(*args, **kwargs)
        return forward

    def _prune(self) -> None:
        """Drop caches nobody can read any more: descendants of cached modules, inputs of cached tails."""
        for mod in list(self.cache):
            for sub in mod.modules():
                if sub is not mod:
                    self.cache.pop(sub, None)
        for mod, (lin, _) in self.probe.tails.items():
            if mod in self.cache and all(m in self.cache for m, (l2, _) in self.probe.tails.items() if l2 is lin):
                self.tail_inputs.pop(lin, None)

    def release(self) -> None:
        self.cache.clear()
        self.tail_inputs.clear()
