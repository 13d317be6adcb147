"""Benchmark: demo wall time (train / sweep split) and evaluation throughput (tokens/s), FP vs quantized.

Usage: python bench/bench_demo.py [--quick] [--repeats 5] [--skip-demo]
Prints a markdown table; numbers are medians over repeats measured in one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def eval_throughput(repeats: int) -> dict[str, float]:
    from qrobust.evaluate import evaluate_loss
    from qrobust.models import build_model
    from qrobust.quant import QuantSpec, quantized

    model = build_model("gpt_neox", "tiny", vocab_size=2048, max_positions=128, seed=0)
    blocks = torch.randint(0, 2048, (64, 128), generator=torch.Generator().manual_seed(0))
    n_tok = 64 * 127
    evaluate_loss(model, blocks[:8])  # warm-up
    fp, q, quant_s = [], [], []
    for _ in range(repeats):
        fp.append(n_tok / evaluate_loss(model, blocks, batch_size=8).seconds)
        with quantized(model, QuantSpec(bits=3, group_size=128)) as res:
            quant_s.append(res.seconds)
            q.append(n_tok / evaluate_loss(model, blocks, batch_size=8).seconds)
    return {"eval_fp_tok_s": statistics.median(fp), "eval_q_tok_s": statistics.median(q),
            "rtn_quantize_s": statistics.median(quant_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-demo", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    out: dict[str, float] = {"threads": torch.get_num_threads()}
    out.update(eval_throughput(a.repeats))
    if not a.skip_demo:
        from qrobust.workflows.demo import run_demo
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = run_demo(Path(d) / "demo", quick=a.quick, progress=False)
            out.update({"demo_total_s": time.perf_counter() - t0, "demo_train_s": s["train_s"],
                        "demo_sweep_s": s["sweep_s"], "demo_records": s["records"], "quick": a.quick})
    print("\n| metric | value |\n|---|---|")
    for k, v in out.items():
        print(f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
