"""Benchmark: peak memory of training from token shards does not grow with the corpus (issue 17, item 3).

Writes two synthetic shard sets under a temporary folder (default 10 M and 1 B random uint16 tokens, ~2 GB,
deleted afterwards), trains each for the same few steps through ``qrobust train CFG`` in a subprocess (micro
preset, batch 8, seq_len 128) and reports each run's peak RSS (``wait4`` rusage of that process) and the growth.
Goal: growth <= 300 MB.

Usage: python bench/bench_shards_memory.py [--small 10000000] [--large 1000000000] [--steps 20] [--tmp /tmp]
       [--json bench/results/shards_memory_<date>.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic shard writer lives with the tests


def train_peak_rss(shards: Path, out: Path, steps: int) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of ``qrobust train`` on ``shards`` in its own process."""
    cfg = {"name": "bench", "out": str(out), "steps": steps, "batch_size": 8, "checkpoint_every": steps,
           "data": {"shards": str(shards), "seq_len": 128}, "model": {"arch": "gpt_neox", "preset": "micro"},
           "schedule": {"kind": "constant", "warmup_steps": 0}, "threads": 1}
    path = out.with_suffix(".yaml")
    path.write_text(json.dumps(cfg))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from qrobust.cli import main; raise SystemExit(main())",
                             "train", str(path), "--quiet"], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"training on {shards} failed (exit {proc.returncode})")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def main() -> None:
    from shard_helpers import write_synthetic_shards

    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=10_000_000)
    ap.add_argument("--large", type=int, default=1_000_000_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qrobust-bench-shards-", dir=a.tmp))
    rows = {}
    try:
        for label, n in (("small", a.small), ("large", a.large)):
            t0 = time.perf_counter()
            write_synthetic_shards(root / label, n_train=n)
            written = time.perf_counter() - t0
            rss, wall = train_peak_rss(root / label, root / f"run-{label}", a.steps)
            rows[label] = {"train_tokens": n, "blocks": n // 128, "peak_rss_mb": round(rss, 1),
                           "train_wall_s": round(wall, 1), "write_s": round(written, 1)}
            print(f"{label}: {n:,} tokens ({n // 128:,} blocks): peak RSS {rss:.1f} MB, train {wall:.1f} s "
                  f"({a.steps} steps), written in {written:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    growth = rows["large"]["peak_rss_mb"] - rows["small"]["peak_rss_mb"]
    perm_mb = (a.large // 128 - a.small // 128) * 8 / 2**20  # the loop's per-epoch randperm: 8 bytes a block
    result = {"date": datetime.date.today().isoformat(), "steps": a.steps, "batch_size": 8, "seq_len": 128,
              "preset": "micro", **rows, "growth_mb": round(growth, 1), "randperm_growth_mb": round(perm_mb, 1),
              "goal_mb": 300, "ok": growth <= 300}
    print(f"growth {growth:.1f} MB (goal <= 300 MB; of it the per-epoch batch permutation: {perm_mb:.1f} MB)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
