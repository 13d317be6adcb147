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

from .errors import CheckpointError


class NonFiniteLoss(CheckpointError):
    """A model's loss came out NaN or infinite: an error, never a number to record."""


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
                  desc: str = "eval", name: str | None = None) -> LossResult:
    """Mean next-token cross-entropy of ``model`` over ``blocks`` ([n, T] token ids).

    Refused before any work: blocks longer than the model's positions, token ids beyond its embedding.
    A loss that is not a finite number (the model's outputs overflow: weights too large for the dtype)
    is an error naming ``name`` (what is evaluated, e.g. the checkpoint and variant), never a result."""
    import time

    from .checks import check_seq_len, check_token_ids

    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError("blocks must be a [n, T] tensor with T >= 2")
    where = name or desc
    check_seq_len(getattr(model, "config", None), blocks.shape[1], where)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        check_token_ids(blocks, emb.weight.shape[0], where)
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
    bad = [i for i, x in enumerate(sums) if not math.isfinite(x)]
    if bad:
        raise NonFiniteLoss(f"{where}: the loss is not a finite number (NaN/inf in {len(bad)} of {len(sums)} "
                            f"evaluation blocks, first block {bad[0]}); its outputs overflow (weights too large "
                            f"for {next(model.parameters()).dtype}?), so it cannot be evaluated and nothing is "
                            "recorded for it")
    return LossResult(loss=math.fsum(sums) / n, n_tokens=n, block_sums=sums, tokens_per_block=per,
                      seconds=time.perf_counter() - t0)


def degradation(loss_fp: float, loss_q: float) -> dict[str, float]:
    """``dq_rel`` = loss_q / loss_fp - 1 (ΔQ L), ``dq_abs`` = loss_q - loss_fp, and both perplexities."""
    return {
        "loss_fp": loss_fp, "loss_q": loss_q, "dq_rel": loss_q / loss_fp - 1.0, "dq_abs": loss_q - loss_fp,
        "ppl_fp": math.exp(loss_fp) if loss_fp < 700 else math.inf,
        "ppl_q": math.exp(loss_q) if loss_q < 700 else math.inf,
    }
