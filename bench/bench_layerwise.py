"""Benchmark: layer-streamed RTN quantize + evaluate of a model bigger than the memory budget.

A synthetic Llama-architecture model (random init, fp32, ≥ 3 GB of safetensors) is built once into
``--model-dir``. Then, in a fresh process, ``qrobust.layerwise.streamed_losses`` evaluates FP and
RTN-quantized loss over ``--n-blocks`` blocks of ``--seq-len`` random tokens. Reported:

- peak resident memory of that process (VmHWM, file-backed pages included) against the goal
  0.35 × model size + 1 GiB, and the model size;
- time per decoder block (median), and its ratio to the FLOP floor: 2 streams × 2 FLOPs per weight
  per token for the block's matmuls, at the machine's measured fp32 GEMM rate (``--gemm-size``
  square matmul, best of 3).

Usage: python bench/bench_layerwise.py [--model-dir /tmp/qrobust-bench-3gb] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# 13 layers of width 2048 and MLP 5504 plus a 32000-token vocabulary: 3.15 GB in fp32
CONFIG = {"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 13, "num_attention_heads": 16,
          "num_key_value_heads": 16, "vocab_size": 32000, "max_position_embeddings": 512,
          "tie_word_embeddings": False}

_MEASURE = r"""
import json, sys, time, torch
from qrobust.layerwise import streamed_losses
from qrobust.quant import QuantSpec
path, n_blocks, seq_len, batch, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]))
method, n_calib = sys.argv[7], int(sys.argv[8])
blocks = torch.randint(0, vocab, (n_blocks, seq_len), generator=torch.Generator().manual_seed(0))
calib = torch.randint(0, vocab, (n_calib, seq_len), generator=torch.Generator().manual_seed(1))
t0 = time.perf_counter()
res = streamed_losses(path, QuantSpec(method=method, bits=4, group_size=128), blocks, batch_size=batch,
                      calibration=calib if method == "gptq" else None)
wall = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
print(json.dumps({"loss_fp": res.fp.loss, "loss_q": res.q.loss, "block_seconds": res.block_seconds,
                  "seconds": wall, "peak_rss": hwm}))
"""


def build(model_dir: Path) -> int:
    """Write the synthetic model once (random init, safetensors); returns its size in bytes."""
    if not (model_dir / "config.json").is_file():
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**CONFIG))
        model.save_pretrained(model_dir, max_shard_size="1GB")
        del model
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def gemm_rate(n: int, threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/qrobust-bench-3gb")
    ap.add_argument("--n-blocks", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--methods", default="rtn,gptq", help="comma-separated: rtn, gptq")
    ap.add_argument("--calib-samples", type=int, default=16, help="GPTQ calibration sequences of --seq-len")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    model_dir = Path(a.model_dir)
    t0 = time.perf_counter()
    size = build(model_dir)
    build_s = time.perf_counter() - t0
    h, f = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    block_weights = 4 * h * h + 3 * h * f
    tokens, calib_tokens = a.n_blocks * a.seq_len, a.calib_samples * a.seq_len
    rate = gemm_rate(a.gemm_size, a.threads)
    goal = 0.35 * size + 2 ** 30
    result: dict = {"model_bytes": size, "goal_bytes": goal, "gemm_flops_per_s": rate, "build_seconds": build_s,
                    "tokens": tokens, "threads": a.threads, "torch": torch.__version__,
                    "machine": platform.processor() or platform.machine()}
    for method in a.methods.split(","):
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(model_dir), str(a.n_blocks), str(a.seq_len),
                              str(a.batch_size), str(CONFIG["vocab_size"]), str(a.threads), method,
                              str(a.calib_samples)], check=True, capture_output=True, text=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        # two streams, 2 FLOPs per weight per token; GPTQ adds Hessians (2 FLOPs per (input dim)² per
        # calibration token, one per input group) and its column sweep (≈ 2 · rows · cols² per linear)
        flops = 2 * 2 * block_weights * tokens
        if method == "gptq":
            flops += 2 * calib_tokens * (2 * h * h + f * f) + 2 * block_weights * tokens
            flops += 2 * (3 * h * h * h + h * h * h + 2 * f * h * h + h * f * f)
        med = statistics.median(m["block_seconds"])
        result[method] = {"peak_rss_bytes": m["peak_rss"], "peak_over_size": m["peak_rss"] / size,
                          "meets_goal": m["peak_rss"] <= goal, "block_seconds_median": med,
                          "block_seconds": m["block_seconds"], "floor_seconds_per_block": flops / rate,
                          "ratio_to_floor": med / (flops / rate), "total_seconds": m["seconds"],
                          "loss_fp": m["loss_fp"], "loss_q": m["loss_q"]}
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
