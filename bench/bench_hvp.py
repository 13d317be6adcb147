"""Benchmark: cost of one Hessian-vector product relative to one gradient, on the demo's model.

Both are over the same eval blocks (8 x 128 tokens, batches of 8) and the same parameters (all of them,
or the quantized linears' weights), in fp32 eager attention, as ``qrobust sharpness`` runs them. The
goal is HVP <= 3x a gradient. Gradient and HVP are timed alternately (``--repeats`` pairs after one warm-up); the ratio
is the median of per-pair ratios. Matmul calls and their time come from torch.profiler.

Model: the demo's ``tiny`` GPT-NeoX (1.3 M parameters, vocab 2048, context 128), random weights unless
``--checkpoint`` names a trained one (the cost does not depend on the values).
Usage: python bench/bench_hvp.py [--checkpoint DIR] [--repeats 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def _interleaved(a, b, repeats: int) -> tuple[float, float, float]:
    """Median times of ``a`` and ``b`` and the median of per-pair ratios b/a, timed alternately so a
    shared machine's drift hits both alike."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb), statistics.median(y / x for x, y in zip(ta, tb))


def _matmuls(fn) -> tuple[int, float]:
    """(matmul calls, their self CPU ms) in one call: the FLOP-heavy part both costs share."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = [e for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
    return sum(e.count for e in ev), sum(e.self_cpu_time_total for e in ev) / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from qrobust.geometry import HessianOperator, select_parameters
    from qrobust.models import build_model, load_checkpoint

    torch.manual_seed(0)
    model = load_checkpoint(a.checkpoint) if a.checkpoint else build_model("gpt_neox", "tiny", 2048, 128, seed=0)
    vocab = model.config.vocab_size
    blocks = torch.randint(0, vocab, (8, 128), generator=torch.Generator().manual_seed(0))
    rows = []
    for subset in (None, ["linear"]):
        params = select_parameters(model, subset)
        with HessianOperator(model, blocks, params, batch_size=8) as op:
            v = torch.randn(op.dim)
            grad_s, hvp_s, ratio = _interleaved(op.loss_and_grad, lambda: op.matvec(v), a.repeats)
            mm_g, mm_h = _matmuls(op.loss_and_grad), _matmuls(lambda: op.matvec(v))
        rows.append({"params": "all" if subset is None else "linear", "n_params": op.dim, "grad_s": grad_s,
                     "hvp_s": hvp_s, "ratio": ratio, "matmul_calls": [mm_g[0], mm_h[0]],
                     "matmul_ms": [mm_g[1], mm_h[1]]})
        print(f"{rows[-1]['params']:>6}: {op.dim:,} params  gradient {1000 * grad_s:.1f} ms  "
              f"HVP {1000 * hvp_s:.1f} ms  ratio {ratio:.2f}x (goal <= 3x)  "
              f"matmuls {mm_g[0]} -> {mm_h[0]} calls, {mm_g[1]:.0f} -> {mm_h[1]:.0f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.machine(), "repeats": a.repeats}, f, indent=1)


if __name__ == "__main__":
    main()
