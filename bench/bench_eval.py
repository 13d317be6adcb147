"""Benchmark: evaluation throughput, qrobust's evaluator against lm-eval's HFLM ``loglikelihood_rolling``.

The same model (the GPTQ bench's Llama: 4 x 512, intermediate 1280, vocabulary 4096, random init, fp32)
and the same token blocks (``--n-blocks`` x ``--seq-len``, random ids, each block starting with token 0
so lm-eval's rolling window, whose first input is its prefix token, sees exactly the block) go through

- qrobust: ``evaluate_loss(model, blocks, batch_size)`` (T-1 targets per block), and
- lm-eval: ``HFLM(pretrained=model, batch_size=..., max_length=T-1, prefix_token_id=0)``, one request per
  block whose text is the block's tokens after the first (a word-level tokenizer maps "t17" to id 17), so
  its single window per request is [0, t1 .. t_{T-2}] predicting t1 .. t_{T-1}: the same targets.

Both losses are the mean NLL over all targets; reported: tokens/s of each (median of ``--repeats``,
alternating), their ratio, and the relative difference of the two losses.
Usage: python bench/bench_eval.py [--n-blocks 64] [--seq-len 512] [--batch-size 8] [--vocab 4096] [--repeats 3]
       [--json out]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_gptq import VOCAB, build, report


def word_tokenizer(vocab: int = VOCAB):
    """A fast tokenizer whose word "t<i>" is id i (no special tokens added): text and ids map one to one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", eos_token="t0")


def run_lm_eval(model, blocks: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(mean NLL per target, seconds) through HFLM.loglikelihood_rolling."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=model, tokenizer=word_tokenizer(model.config.vocab_size), batch_size=batch_size, max_length=blocks.shape[1] - 1,
              device="cpu", dtype=torch.float32, prefix_token_id=0, logits_cache=False)
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(" ".join(f"t{i}" for i in b[1:].tolist()),),
                     idx=j) for j, b in enumerate(blocks)]
    t0 = time.perf_counter()
    lls = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    seconds = time.perf_counter() - t0
    return -sum(lls) / (blocks.shape[0] * (blocks.shape[1] - 1)), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-blocks", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size (the head and softmax grow with it)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from qrobust.evaluate import evaluate_loss
    model = build(vocab=a.vocab)
    blocks = torch.randint(1, a.vocab, (a.n_blocks, a.seq_len), generator=torch.Generator().manual_seed(0))
    blocks[:, 0] = 0
    n_targets = a.n_blocks * (a.seq_len - 1)
    evaluate_loss(model, blocks[: a.batch_size], a.batch_size)  # warm-up both paths once
    run_lm_eval(model, blocks[: a.batch_size], a.batch_size)
    ours, theirs = [], []
    for _ in range(a.repeats):
        r = evaluate_loss(model, blocks, a.batch_size)
        ours.append((r.loss, r.seconds))
        theirs.append(run_lm_eval(model, blocks, a.batch_size))
    q_s, l_s = statistics.median(s for _, s in ours), statistics.median(s for _, s in theirs)
    loss_q, loss_l = ours[0][0], theirs[0][0]
    out = {"vocab": a.vocab, "n_blocks": a.n_blocks, "seq_len": a.seq_len, "batch_size": a.batch_size, "threads": a.threads,
           "targets": n_targets, "qrobust_seconds": [s for _, s in ours], "lm_eval_seconds": [s for _, s in theirs],
           "qrobust_tokens_per_s": n_targets / q_s, "lm_eval_tokens_per_s": n_targets / l_s,
           "speedup": l_s / q_s, "loss_qrobust": loss_q, "loss_lm_eval": loss_l,
           "loss_rel_diff": abs(loss_q - loss_l) / loss_l, "torch": torch.__version__}
    try:
        import lm_eval
        out["lm_eval"] = getattr(lm_eval, "__version__", "?")
    except ImportError:
        pass
    report(out, a.json, 24)


if __name__ == "__main__":
    main()
