"""Seconds of each predictor of GPTQ ΔQ L vs one GPTQ quantization + its evaluation (issue 18 goal: >= 50x
cheaper), on the demo's FULL model shape (gpt_neox "tiny", vocab 2048, 128-token windows).

Each predictor is timed alone, from an empty cache (its shared work, e.g. the Hessians or the FP loss,
charged to it), at w3g128, with 16 calibration windows and 32 evaluation blocks; the reference is
``quantized(model, gptq-w3g128, calibration)`` plus ``evaluate_loss`` on 128 blocks, with 16 calibration
windows and with 128 (the demo sweep's). Best of ``--repeats``, on ``--threads`` torch threads (both sides).

    python bench/bench_predictors.py [--repeats 2] [--threads 1] \
        [--json bench/results/predictors.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qrobust.evaluate import evaluate_loss
from qrobust.models import build_model
from qrobust.monitor.predictors import PREDICTORS, compute_predictors
from qrobust.quant.pipelines.in_memory import quantized
from qrobust.quant.registry import QuantSpec


def best(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("gpt_neox", "tiny", vocab_size=2048, max_positions=128, seed=0)
    g = torch.Generator().manual_seed(0)
    calib, ev = torch.randint(0, 2048, (128, 128), generator=g), torch.randint(0, 2048, (160, 128), generator=g)
    spec = QuantSpec("gptq", 3, 128)

    def gptq_eval(n_calib: int) -> None:
        with quantized(model, spec, calib[:n_calib]):
            evaluate_loss(model, ev[:128])
    ref = best(lambda: gptq_eval(16), args.repeats)
    ref128 = best(lambda: gptq_eval(128), args.repeats)  # the demo sweep's calibration (128 windows)
    calib = calib[:16]
    rows = []
    for name, p in PREDICTORS.items():
        s = best(lambda: compute_predictors(model, [name], [spec], calib, ev[128:], cache={}), args.repeats)
        rows.append({"predictor": name, "cost": p.cost, "seconds": s, "ratio": ref / s})
    print(f"GPTQ w3g128 + evaluation on 128 blocks: {ref:.2f} s with 16 calibration windows, {ref128:.2f} s with "
          f"128 (threads {torch.get_num_threads()})")
    print("| predictor | cost | seconds | GPTQ(16)+eval / it | GPTQ(128)+eval / it |\n|---|---|---:|---:|---:|")
    for r in rows:
        r["ratio128"] = ref128 / r["seconds"]
        print(f"| {r['predictor']} | {r['cost']} | {r['seconds']:.3f} | {r['ratio']:.0f}x | {r['ratio128']:.0f}x |")
    if args.json:
        from qrobust.io.atomic import write_text
        out = {"gptq_eval_seconds": ref, "gptq128_eval_seconds": ref128, "rows": rows}
        write_text(Path(args.json), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
