"""Benchmark: the fake-quant cost of RTN per weight format, on the GPTQ bench shape (bench/bench_gptq.py:
Llama, 4 layers, hidden 512, intermediate 1280; random init, seed 0): every linear's weight of the 4 blocks
quantized with ``fake_quantize_format``, what RTN does per layer. Medians over ``--repeats`` in one run,
each format's ratio to int4 g128 RTN in the same run (the issue's goal: NVFP4 / MXFP4 <= 2x int4).

Also times the whole RTN method on the model (``quantized(model, spec)``: weight copies included) per
format, so the per-weight numbers can be read against what a sweep pays.
Usage: python bench/bench_formats.py [--repeats 15] [--threads 1] [--json bench/results/formats_cost_<date>.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gptq import HIDDEN, INTER, LAYERS, build  # noqa: E402  (the same model)

FORMATS = ["int4-g128", "nvfp4", "mxfp4", "fp8-e4m3-channel", "mxfp8-e4m3", "mxfp6-e2m3"]


def time_weights(weights: list[torch.Tensor], names: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds to fake-quantize every weight once per format, ``repeats`` rounds (after one warm-up).
    The formats take turns within each round, so load from other processes hits them alike."""
    from qrobust.quant.formats.grid import fake_quantize_format
    from qrobust.quant.formats.presets import parse_format
    fmts = {n: parse_format(n) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):
        for n, fmt in fmts.items():
            t0 = time.perf_counter()
            for w in weights:
                fake_quantize_format(w, fmt)
            if r:
                times[n].append(time.perf_counter() - t0)
    return times


def time_method(model, fmt_name: str, repeats: int) -> list[float]:
    """Seconds of the whole RTN method on the model (enter + leave ``quantized``: weights restored)."""
    from qrobust.quant import QuantSpec, quantized
    spec = QuantSpec("rtn", format=fmt_name)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with quantized(model, spec, None):
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--formats", nargs="*", default=FORMATS)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from qrobust.quant import select_linears
    model = build(0)
    weights = [m.weight.detach() for m in select_linears(model).values()]
    n_values = sum(w.numel() for w in weights)
    res: dict[str, dict] = {}
    wt = time_weights(weights, a.formats, a.repeats)
    for name in a.formats:
        t = wt[name]
        m = time_method(model, name, max(3, a.repeats // 3))
        res[name] = {"weights_s_median": statistics.median(t), "weights_s_all": t,
                     "rtn_method_s_median": statistics.median(m), "ns_per_value": statistics.median(t) / n_values * 1e9}
    base = res["int4-g128"]
    for r in res.values():
        r["ratio_to_int4"] = r["weights_s_median"] / base["weights_s_median"]
        r["method_ratio_to_int4"] = r["rtn_method_s_median"] / base["rtn_method_s_median"]
    print(f"{len(weights)} linears, {n_values / 1e6:.2f} M values, {a.threads} thread(s), median of {a.repeats}")
    print(f"{'format':>18} {'weights ms':>11} {'ns/value':>9} {'x int4':>7} {'RTN ms':>8} {'x int4':>7}")
    for name, r in res.items():
        print(f"{name:>18} {r['weights_s_median'] * 1e3:11.1f} {r['ns_per_value']:9.2f} {r['ratio_to_int4']:7.2f} "
              f"{r['rtn_method_s_median'] * 1e3:8.1f} {r['method_ratio_to_int4']:7.2f}")
    if a.json:
        out = {"date": datetime.date.today().isoformat(), "shape": {"layers": LAYERS, "hidden": HIDDEN,
               "intermediate": INTER, "linears": len(weights), "values": n_values},
               "threads": a.threads, "repeats": a.repeats, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "formats": res}
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
