"""Validation loss over held-out blocks, and the FP-vs-quantized metrics (the paper's ΔQ L).

Each block of T tokens yields T-1 next-token targets; every target is counted exactly once and the loss
is the mean over all targets of all blocks (sums accumulated in float64). Per-block sums are kept so
later statistics (paired bootstrap over blocks) can reuse them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class LossResult:
    loss: float
    n_tokens: int
    block_sums: list[float]  # summed target NLL per block
    tokens_per_block: int
    seconds: float = 0.0

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf


@torch.inference_mode()
def evaluate_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, progress: bool = False,
                  desc: str = "eval") -> LossResult:
    """Mean next-token cross-entropy of ``model`` over ``blocks`` ([n, T] token ids)."""
    import time

    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError("blocks must be a [n, T] tensor with T >= 2")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: list[float] = []
    bar = tqdm(total=blocks.shape[0], desc=desc, disable=not progress, leave=False, unit="blk")
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i: i + batch_size].to(device)
        logits = model(input_ids=x).logits[:, :-1].float()
        tgt = x[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
        sums.extend(nll.view(x.shape[0], -1).double().sum(dim=1).tolist())
        bar.update(x.shape[0])
    bar.close()
    if was_training:
        model.train()
    per = blocks.shape[1] - 1
    n = per * blocks.shape[0]
    return LossResult(loss=math.fsum(sums) / n, n_tokens=n, block_sums=sums, tokens_per_block=per,
                      seconds=time.perf_counter() - t0)


def degradation(loss_fp: float, loss_q: float) -> dict[str, float]:
    """``dq_rel`` = loss_q / loss_fp - 1 (ΔQ L), ``dq_abs`` = loss_q - loss_fp, and both perplexities."""
    return {
        "loss_fp": loss_fp, "loss_q": loss_q, "dq_rel": loss_q / loss_fp - 1.0, "dq_abs": loss_q - loss_fp,
        "ppl_fp": math.exp(loss_fp) if loss_fp < 700 else math.inf,
        "ppl_q": math.exp(loss_q) if loss_q < 700 else math.inf,
    }
