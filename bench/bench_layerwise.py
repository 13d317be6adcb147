"""Benchmark: layer-streamed quantize + evaluate of a model bigger than the memory budget.

A synthetic Llama-architecture model (random init, fp32, ≥ 3 GB of safetensors) is built once into
``--model-dir``. Then, in a fresh process per case, ``qrobust.quant.pipelines.streamed.stream_checkpoint`` evaluates
FP and quantized loss (4-bit, group 128) over ``--n-blocks`` blocks of ``--seq-len`` random tokens.
Cases: ``rtn``, ``gptq``, ``awq`` alone, and ``rtn+gptq+awq`` (FP and all three variants in one pass,
as a streamed sweep runs them). Reported per case:

- peak resident memory of that process (VmHWM, file-backed pages included) against the goal
  0.35 × model size + 1 GiB, and the model size;
- time per decoder block (median), and its ratio to the FLOP floor at the machine's measured fp32
  GEMM rate (a batch's tokens × width @ width × MLP width, best of 5). The floor counts the block's matmuls:
  2 FLOPs per weight per token for each stream (FP and one per variant), plus, for GPTQ, its
  calibration forward, Hessians and column sweep, and for AWQ, its calibration forward, one forward
  per scale-grid point and the clip search (an approximation: AWQ inspects whole sub-modules).

Usage: python bench/bench_layerwise.py [--model-dir /tmp/qrobust-bench-3gb] [--states auto] [--json out.json]
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
from qrobust.quant.pipelines.streamed import stream_checkpoint
from qrobust.quant import QuantSpec
path, n_blocks, seq_len, batch, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]))
methods, n_calib, states = sys.argv[7].split("+"), int(sys.argv[8]), sys.argv[9]
blocks = torch.randint(0, vocab, (n_blocks, seq_len), generator=torch.Generator().manual_seed(0))
calib = torch.randint(0, vocab, (n_calib, seq_len), generator=torch.Generator().manual_seed(1))
specs = [QuantSpec(method=m, bits=4, group_size=128) for m in methods]
t0 = time.perf_counter()
run = stream_checkpoint(path, specs, blocks, batch_size=batch, states=states,
                        calibration={s: calib for s in specs if s.method != "rtn"})
wall = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
print(json.dumps({"loss_fp": run.fp.loss, "loss_q": {v.spec.method: v.q.loss for v in run.variants},
                  "quantize_s": {v.spec.method: v.quantize_seconds for v in run.variants},
                  "calibration_s": {v.spec.method: v.calibration_seconds for v in run.variants},
                  "eval_s": {v.spec.method: v.eval_seconds for v in run.variants}, "load_s": run.load_seconds,
                  "block_seconds": run.block_seconds, "seconds": wall, "peak_rss": hwm, "states": run.tier}))
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


def gemm_rate(m: int, k: int, n: int, threads: int) -> float:
    """fp32 FLOP/s of an [m, k] @ [k, n] matmul (the blocks' typical shape), best of 5."""
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/qrobust-bench-3gb")
    ap.add_argument("--n-blocks", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="rtn,gptq,awq,rtn+gptq+awq",
                    help="comma-separated cases; a case joins methods streamed in one pass with '+'")
    ap.add_argument("--calib-samples", type=int, default=16, help="GPTQ/AWQ calibration sequences of --seq-len")
    ap.add_argument("--states", default="auto", choices=["auto", "device", "cpu", "disk"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    model_dir = Path(a.model_dir)
    t0 = time.perf_counter()
    size = build(model_dir)
    build_s = time.perf_counter() - t0
    h, f = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    block_weights = 4 * h * h + 3 * h * f
    tokens, calib_tokens = a.n_blocks * a.seq_len, a.calib_samples * a.seq_len
    rate = gemm_rate(a.batch_size * a.seq_len, CONFIG["hidden_size"], CONFIG["intermediate_size"], a.threads)
    goal = 0.35 * size + 2 ** 30
    result: dict = {"model_bytes": size, "goal_bytes": goal, "gemm_flops_per_s": rate, "build_seconds": build_s,
                    "tokens": tokens, "threads": a.threads, "torch": torch.__version__,
                    "machine": platform.processor() or platform.machine()}
    clipped = 2 * h * h + 3 * h * f  # AWQ does not clip q and k
    for case in a.methods.split(","):
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(model_dir), str(a.n_blocks), str(a.seq_len),
                              str(a.batch_size), str(CONFIG["vocab_size"]), str(a.threads), case,
                              str(a.calib_samples), a.states], check=True, capture_output=True, text=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        flops = 2 * block_weights * tokens  # the FP stream; each variant adds its own below
        for method in case.split("+"):
            flops += 2 * block_weights * tokens
            if method == "gptq":  # calibration forward, Hessians (one per input group), column sweeps
                flops += 2 * block_weights * calib_tokens + 2 * calib_tokens * (3 * h * h + f * f)
                flops += 2 * (3 * h * h * h + h * h * h + 2 * f * h * h + h * f * f)
            elif method == "awq":  # calibration forward, one forward per grid point, clip search
                flops += 2 * block_weights * calib_tokens * (1 + 20)
                flops += 20 * 2 * clipped * min(512, calib_tokens)
        med = statistics.median(m["block_seconds"])
        result[case] = {"peak_rss_bytes": m["peak_rss"], "peak_over_size": m["peak_rss"] / size,
                        "meets_goal": m["peak_rss"] <= goal, "block_seconds_median": med,
                        "block_seconds": m["block_seconds"], "floor_seconds_per_block": flops / rate,
                        "ratio_to_floor": med / (flops / rate), "total_seconds": m["seconds"],
                        "loss_fp": m["loss_fp"], "loss_q": m["loss_q"], "states": m["states"],
                        "quantize_s": m["quantize_s"], "calibration_s": m["calibration_s"], "eval_s": m["eval_s"],
                        "load_s": m["load_s"]}
        print(case, json.dumps({k: v for k, v in result[case].items() if k != "block_seconds"}), flush=True)
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
