"""Accumulate S = Σ xᵀx in fp32 for GPTQ's Hessians H = 2/N · S, one per input group.

S is symmetric, so on CPU only its upper block-triangle is computed: block row i of S gets
x[:, i]ᵀ · x[:, i:], with ``blocks`` block rows (4 by default: 62.5 % of the flops of a full
``xᵀx``; measured 1.4-1.5x faster on this project's 2-core machine). BLAS ``syrk`` would halve the
flops, but the one reachable from Python (scipy's OpenBLAS) keeps its threads spinning after each
call and slowed the model forward it is interleaved with by more than it saved. On GPUs the plain
matmul is used: there the forward, not S, dominates.
"""
from __future__ import annotations

import torch


class XtX:
    """Running S = Σ xᵀx and token count N for one input width."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", blocks: int | None = None):
        self.dim = dim
        self.n = 0
        dev = torch.device(device)
        if blocks is None:
            blocks = 4 if dev.type == "cpu" and dim >= 256 else 1
        self.edges = [round(i * dim / blocks) for i in range(blocks + 1)]
        self._S = torch.zeros(dim, dim, device=dev, dtype=torch.float32)
        self._symmetric = False

    def add(self, x: torch.Tensor) -> None:
        if self._symmetric:
            raise RuntimeError("XtX: inputs added after full(); accumulate first, then read S")
        x = x.detach().reshape(-1, x.shape[-1])
        if x.shape[1] != self.dim:
            raise ValueError(f"input width {x.shape[1]} != {self.dim}")
        x = x.to(self._S.device, torch.float32)
        if len(self.edges) == 2:
            self._S.addmm_(x.T, x)
        else:
            for a, b in zip(self.edges[:-1], self.edges[1:]):
                self._S[a:b, a:].addmm_(x[:, a:b].T, x[:, a:])
        self.n += x.shape[0]

    def full(self, chunk: int = 1024) -> torch.Tensor:
        """S, made exactly symmetric by mirroring its upper triangle into the lower one, in place and a
        column chunk at a time, so no second [dim, dim] matrix is made (for a 5504-wide MLP input that is
        121 MB saved at GPTQ's peak). Returns the accumulator itself: do not modify it; once symmetrised
        it takes no more inputs. Calling it again returns the same, unchanged."""
        S = self._S
        if not self._symmetric:
            n = S.shape[0]
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                d = S[a:b, a:b]
                d.copy_(torch.triu(d) + torch.triu(d, 1).T)
                S[b:, a:b] = S[a:b, b:].T
            self._symmetric = True
        return S
