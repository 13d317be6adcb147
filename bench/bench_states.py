"""Benchmark: where layer streaming keeps its hidden states, and what that costs in memory and time.

On the synthetic 3.16 GB Llama of ``bench_layerwise.py`` (built there once), RTN w4g128 is streamed
over a long evaluation set (default 64 × 256 tokens: 134 MB of fp32 states per stream, two streams),
once per tier, each in a fresh process. Reported per tier: peak RSS (VmHWM), its difference from the
``device`` tier, the bytes of carried states, time per block (median), and the losses, which must be
equal across tiers.

Usage: python bench/bench_states.py [--model-dir /tmp/qrobust-bench-3gb] [--tiers device,disk] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layerwise import _MEASURE, CONFIG, build  # noqa: E402  (the same model and measuring process)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/qrobust-bench-3gb")
    ap.add_argument("--n-blocks", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiers", default="device,disk")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    model_dir = Path(a.model_dir)
    size = build(model_dir)
    per_stream = a.n_blocks * a.seq_len * CONFIG["hidden_size"] * 4
    result: dict = {"model_bytes": size, "tokens": a.n_blocks * a.seq_len, "state_bytes_per_stream": per_stream,
                    "streams": 2, "threads": a.threads}
    for tier in a.tiers.split(","):
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(model_dir), str(a.n_blocks), str(a.seq_len),
                              str(a.batch_size), str(CONFIG["vocab_size"]), str(a.threads), "rtn", "1", tier],
                             check=True, capture_output=True, text=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        result[tier] = {"peak_rss_bytes": m["peak_rss"], "block_seconds_median": statistics.median(m["block_seconds"]),
                        "total_seconds": m["seconds"], "loss_fp": m["loss_fp"], "loss_q": m["loss_q"],
                        "states": m["states"]}
        print(tier, json.dumps(result[tier]), flush=True)
    if "device" in result:
        for tier in a.tiers.split(","):
            result[tier]["peak_minus_device"] = result[tier]["peak_rss_bytes"] - result["device"]["peak_rss_bytes"]
    losses = {json.dumps([r["loss_fp"], r["loss_q"]]) for k, r in result.items() if isinstance(r, dict)}
    result["same_losses_in_every_tier"] = len(losses) == 1
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
