"""Live-monitor overhead at the demo's defaults (issue 18 goal: ≤ 5 % of training wall time).

Trains the demo's FULL model and data (gpt_neox tiny, seq 128, batch 16) for ``--steps`` steps, checkpoints
every 100, without and with ``monitor: {every: 100, n_blocks: 32}`` (RTN at 3 and 4 bits, g128: the monitor's
defaults). Repeats alternate the two; reported: median wall times, their ratio − 1 (the overhead), the
monitor's own seconds (sum of ``monitor/seconds`` in the step log) as a share of the monitored run's wall
time — the steadier figure on a shared machine — and whether every checkpoint of the two runs is
bit-identical (sha256 of the weights and the optimizer state).

    python bench/bench_monitor.py [--steps 300] [--repeats 3] [--threads 2] [--json bench/results/monitor_overhead.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import qrobust
from qrobust.workflows.demo import FULL


def config(out: Path, steps: int, threads: int, monitor: bool) -> dict:
    cfg = json.loads(json.dumps(FULL)) | {"out": str(out), "steps": steps, "branches": [], "threads": threads}
    if monitor:
        cfg["monitor"] = {"every": 100, "n_blocks": 32}
    return cfg


def digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "checkpoints").glob("*/step-*/*.safetensors"))}


def run(out: Path, steps: int, threads: int, monitor: bool) -> float:
    t0 = time.perf_counter()
    qrobust.train(config(out, steps, threads, monitor), progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    plain, monitored, shares, identical = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        qrobust.train(config(Path(tmp) / "warm", 2, a.threads, True), progress=False)  # tokenizer cache, imports
        for i in range(a.repeats):
            p, m = Path(tmp) / f"plain{i}", Path(tmp) / f"mon{i}"
            plain.append(run(p, a.steps, a.threads, False))
            monitored.append(run(m, a.steps, a.threads, True))
            secs = sum(json.loads(ln).get("monitor/seconds", 0.0) for ln in (m / "logs" / "main.jsonl").read_text().splitlines())
            shares.append(secs / monitored[-1])
            identical.append(digest(p) == digest(m) and bool(digest(p)))
            print(f"repeat {i}: plain {plain[-1]:.1f} s, monitored {monitored[-1]:.1f} s, monitor {secs:.2f} s, "
                  f"bit-identical {identical[-1]}")
    res = {"date": time.strftime("%Y-%m-%d"), "steps": a.steps, "threads": a.threads, "repeats": a.repeats,
           "plain_s_median": statistics.median(plain), "monitored_s_median": statistics.median(monitored),
           "overhead_wall": statistics.median(monitored) / statistics.median(plain) - 1,
           "monitor_share_median": statistics.median(shares), "bit_identical": all(identical),
           "plain_s": plain, "monitored_s": monitored}
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
