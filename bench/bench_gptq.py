"""Benchmark: GPTQ end to end on the issue's shape, vs the FLOP floor (and llm-compressor when installed).

Shape: Llama, 4 layers, hidden 512, intermediate 1280, vocab 4096, W4 g128, 128 x 512 calibration tokens.
Usage: python bench/bench_gptq.py [--repeats 3] [--threads 2] [--profile gptqmodel]
Prints medians over repeats measured in one run, the FLOP floor and the ratio to it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1280, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def flop_floor(model, n_tokens: int) -> dict[str, float]:
    """Hessians 2·N·in² per input group + GPTQ updates ~2·out·in² per linear + the calibration forward."""
    from qrobust.quant import select_linears
    lin = select_linears(model)
    groups = {}  # input groups of a Llama block: (q,k,v), o, (gate,up), down
    for n, m in lin.items():
        key = n.rsplit(".", 1)[0] + (":qkv" if n.endswith(("q_proj", "k_proj", "v_proj")) else
                                     ":gu" if n.endswith(("gate_proj", "up_proj")) else ":" + n)
        groups.setdefault(key, m.in_features)
    hess = sum(2 * n_tokens * d * d for d in groups.values())
    upd = sum(2 * m.out_features * m.in_features ** 2 for m in lin.values())
    fwd = sum(2 * n_tokens * m.in_features * m.out_features for m in lin.values())
    return {"hessian_tflop": hess / 1e12, "update_tflop": upd / 1e12, "forward_tflop": fwd / 1e12}


def measure_matmul_gflops(threads: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * 2048 ** 3 / statistics.median(ts) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", default="gptqmodel")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from qrobust.evaluate import evaluate_loss
    from qrobust.quant import QuantSpec, quantized

    model = build()
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 4096, (128, 512), generator=g)
    evalb = torch.randint(0, 4096, (16, 512), generator=g)
    fp = evaluate_loss(model, evalb).loss
    spec = QuantSpec(method="gptq", bits=4, group_size=128, sym=True, options=(("profile", a.profile),))
    times, dq = [], None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        with quantized(model, spec, calib) as res:
            times.append(time.perf_counter() - t0)
            dq = evaluate_loss(model, evalb).loss / fp - 1
    floor = flop_floor(model, calib.numel())
    gflops = measure_matmul_gflops(a.threads)
    total_tflop = floor["hessian_tflop"] + floor["update_tflop"]
    floor_s = total_tflop * 1e3 / gflops
    out = {"profile": a.profile, "threads": a.threads, "gptq_wall_s_median": statistics.median(times),
           "gptq_wall_s_all": times, **floor, "matmul_gflops": gflops, "floor_s_hessian_plus_update": floor_s,
           "ratio_to_floor": statistics.median(times) / floor_s, "dq_rel_w4g128": dq,
           "layer_seconds_sum": sum(v["seconds"] for v in res.layers.values())}
    try:
        import llmcompressor  # noqa: F401
        out["llmcompressor"] = "installed: comparison not yet wired"
    except ImportError:
        out["llmcompressor"] = "not installed (pip install llmcompressor to compare)"
    for k, v in out.items():
        print(f"{k:32s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
