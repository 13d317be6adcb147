"""The GPTQ weight update (Frantar et al. 2022) as a pure function: (W, H) -> quantized W.

Follows the reference implementation (IST-DASLab ``gptq.py``): dead columns zeroed, damping
λ = damp · mean(diag H), upper Cholesky factor of H⁻¹, lazy batch updates in blocks of ``block_size``,
optional act-order (columns by descending diag H) and static groups (group parameters from the
original W, looked up by each column's original index).

One deliberate difference: with dynamic groups, the parameters of a group that starts inside a lazy
block are computed from the *fully updated* weights (block-local updates included). The reference
reads ``W`` there, which lacks the updates made earlier in the same block; the two agree whenever the
group size is a multiple of the block size (e.g. the usual 128 / 128) or groups are static.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import QrobustError
from ..formats.grid import find_params, maxq_for, quantize_dequantize


@dataclass
class GPTQResult:
    weight: torch.Tensor  # fake-quantized weight, [out, in], fp32
    damp: float  # damping fraction actually used (after any auto-increase)
    loss: float  # GPTQ's own objective sum_i (w - q)^2 / [H^-1]_ii^2 / 2, summed over rows
    g_idx: torch.Tensor  # group index of every input column (for export)
    row_loss: torch.Tensor  # the same objective per output row (rows are independent in GPTQ)
    scale: torch.Tensor | None = None  # grid scale per (row, group id): [out, n_groups] (for export)
    zero: torch.Tensor | None = None  # grid zero point per (row, group id), same shape


def _inverse_cholesky(H: torch.Tensor, damp: float, damp_step: float, damp_max: float, name: str
                      ) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, raising λ step by step if the factorisation fails."""
    mean_diag = torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    d = damp
    while True:  # at most three [in, in] matrices alive besides H (they are big for wide MLPs)
        Hd = H.clone()
        Hd[idx, idx] += d * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        del Hd
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if info == 0:
                return U, d
        if damp_step <= 0 or d + damp_step > damp_max + 1e-12:
            raise QrobustError(f"GPTQ: the Hessian of layer '{name}' is not positive definite even with damp={d:g}; "
                               "raise damp, use more calibration samples, or exclude this layer")
        d += damp_step


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, sym: bool = True,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False, static_groups: bool = False,
                  damp_step: float = 0.0, damp_max: float = 1.0, name: str = "layer",
                  dtype: torch.dtype = torch.float32, own_h: bool = False, grid: str = "reference") -> GPTQResult:
    """Quantize ``W`` ([out, in]) against the Hessian ``H`` ([in, in]) of its layer inputs.

    All math runs in ``dtype`` (fp32 by default; float64 for reference checks), never in TF32/half.
    ``own_h``: the caller hands ``H`` over (it is overwritten instead of copied, saving one [in, in]).
    ``grid``: the quantizer grid (``quant/grid.py``): "reference" or "compressed-tensors".
    """
    W = W.detach().clone().to(dtype)
    H = H.detach().to(dtype) if own_h else H.detach().clone().to(dtype)
    rows, cols = W.shape
    maxq_for(bits)  # validates bits
    g = cols if group_size == -1 else group_size
    if g > cols:
        raise QrobustError(f"GPTQ: group size {group_size} is larger than in_features={cols} of layer '{name}'; "
                           "use -1 (per output channel) or a smaller group size")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    static = None
    if static_groups and group_size != -1:
        static = [find_params(W[:, a: a + g], bits, sym, grid) for a in range(0, cols, g)]
    whole = find_params(W, bits, sym, grid) if group_size == -1 else None

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv, used = _inverse_cholesky(H, damp, damp_step, damp_max, name)
    del H  # only the inverse factor is needed from here on

    Q = torch.zeros_like(W)
    losses = torch.zeros(rows, device=W.device, dtype=dtype)
    g_pos = torch.zeros(cols, dtype=torch.long)  # group id by position (permuted order)
    n_groups = 1 if group_size == -1 else -(-cols // g)
    scales = torch.zeros(rows, n_groups, dtype=dtype, device=W.device)
    zeros = torch.zeros(rows, n_groups, dtype=dtype, device=W.device)
    scale, zero = whole if whole is not None else (None, None)
    if whole is not None:
        scales[:, 0:1], zeros[:, 0:1] = whole
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size != -1:
                if static is not None:
                    orig = int(perm[col]) if perm is not None else col
                    scale, zero = static[orig // g]
                    g_pos[col] = orig // g
                    scales[:, orig // g: orig // g + 1], zeros[:, orig // g: orig // g + 1] = scale, zero
                else:
                    if col % g == 0:
                        # fully updated weights of the group: the in-block part from W1; columns past
                        # the block still lack this block's pending lazy update, so apply it here
                        end = col + g
                        part = W1[:, i: min(end, i2) - i1]
                        if end > i2:
                            rest = W[:, i2:end] - Err1[:, :i].matmul(Hinv[i1:col, i2:end])
                            part = torch.cat([part, rest], dim=1)
                        scale, zero = find_params(part, bits, sym, grid)
                        scales[:, col // g: col // g + 1], zeros[:, col // g: col // g + 1] = scale, zero
                    g_pos[col] = col // g
            w = W1[:, i]
            d = Hinv1[i, i]
            q = quantize_dequantize(w.unsqueeze(1), scale, zero, bits, grid).flatten()
            Q1[:, i] = q
            losses += (w - q) ** 2 / d ** 2 / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    g_idx = g_pos
    if perm is not None:
        inv = torch.argsort(perm)
        Q = Q[:, inv]
        g_idx = g_pos[inv]
    return GPTQResult(weight=Q, damp=used, loss=float(losses.sum()), g_idx=g_idx, row_loss=losses, scale=scales,
                      zero=zeros)
