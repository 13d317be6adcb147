"""Hessian-vector products of the eval loss of a causal LM, over fixed token blocks and a parameter subset.

The loss is the mean next-token NLL over all tokens of the blocks (the number ``evaluate_loss`` reports),
so H is the Hessian of exactly that number. Each product is a double backward pass per batch, weighted
by the batch's share of tokens. Fused attention kernels have no double backward (PyTorch's CPU flash
SDPA raises), so the operator switches the model to eager attention while it is in use; the model runs
in eval mode (no dropout) and fp32.

Parameters are chosen by glob patterns on their names, or ``linear`` for the weights of the linears
a quantizer touches. Parameters outside the subset are frozen while the operator is
used, so their gradients are never computed.
"""
from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.pipelines.in_memory import select_linears


def select_parameters(model: nn.Module, patterns: list[str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs matching any pattern; ``None`` / ``["all"]``: all; ``linear``: the weights
    of the linears a quantizer touches (every ``nn.Linear`` but the LM head)."""
    named = list(model.named_parameters())
    if not patterns or patterns == ["all"]:
        return named
    linear = {f"{mn}.weight" for mn in select_linears(model)}
    out = [(n, p) for n, p in named
           if any((pat == "linear" and n in linear) or fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not out:
        raise ConfigError(f"no parameter matches {patterns}; names look like '{named[0][0]}' "
                          "(use glob patterns, 'linear' or 'all')")
    return out


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Eager attention while inside (double backward through fused kernels is not implemented)."""
    cfg = getattr(model, "config", None)
    before = getattr(cfg, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


@dataclass
class HessianOperator:
    """v ↦ H v for the mean token loss over ``blocks`` ([n, L] token ids), flat over the chosen parameters.

    Use as a context manager: inside it, the model is in eval mode with eager attention and only the
    chosen parameters require grad; everything is restored on exit."""

    model: nn.Module
    blocks: torch.Tensor
    params: list[tuple[str, nn.Parameter]]
    batch_size: int = 8
    matvecs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.blocks.ndim != 2 or self.blocks.shape[1] < 2:
            raise ConfigError("Hessian blocks must be [n_blocks, seq_len >= 2] token ids")
        self.sizes = [p.numel() for _, p in self.params]
        self.dim = sum(self.sizes)
        self.device = self.params[0][1].device
        self._batches = [self.blocks[i:i + self.batch_size].to(self.device)
                         for i in range(0, self.blocks.shape[0], self.batch_size)]
        total = sum(b.numel() - b.shape[0] for b in self._batches)  # predicted tokens
        self._weights = [(b.numel() - b.shape[0]) / total for b in self._batches]

    def __enter__(self) -> "HessianOperator":
        self._stack = contextlib.ExitStack()
        chosen = {id(p) for _, p in self.params}
        grads = [(p, p.requires_grad) for p in self.model.parameters()]
        self._stack.callback(lambda: [p.requires_grad_(r) for p, r in grads])
        for p, _ in grads:
            p.requires_grad_(id(p) in chosen)
        was_training = self.model.training
        self.model.eval()
        self._stack.callback(lambda: self.model.train(was_training))
        self._stack.enter_context(eager_attention(self.model))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=batch, labels=batch).loss.float()

    def flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1).float() for t in tensors])

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.view_as(p) for c, (_, p) in zip(torch.split(v, self.sizes), self.params)]

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        """The loss and its flat gradient (one backward per batch): the cost unit HVPs are compared with."""
        ps = [p for _, p in self.params]
        g = torch.zeros(self.dim, device=self.device)
        loss = 0.0
        for w, b in zip(self._weights, self._batches):
            lb = self._loss(b)
            g.add_(self.flat(torch.autograd.grad(lb, ps)), alpha=w)
            loss += w * lb.item()
        return loss, g

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v (flat fp32), summed over batches by token share."""
        ps = [p for _, p in self.params]
        vs = self.split(v.to(self.device, torch.float32))
        out = torch.zeros(self.dim, device=self.device)
        for w, b in zip(self._weights, self._batches):
            g = torch.autograd.grad(self._loss(b), ps, create_graph=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, vs))
            hv = torch.autograd.grad(dot, ps)
            out.add_(self.flat(hv), alpha=w)
        self.matvecs += 1
        return out
