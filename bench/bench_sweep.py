"""Benchmark: one qrobust sweep vs the same work as one process per (checkpoint, method, bits) job.

The paper's scripts ran one cluster job per (revision, bits): each reloaded the model and re-evaluated
the FP loss. Here the per-job baseline is ``qrobust eval CKPT --method M --bits B --json`` in a fresh
process per job (load, FP evaluation, calibration, quantize, quantized evaluation), and the sweep is
``qrobust sweep`` over the same checkpoints, variants, evaluation blocks and calibration windows.
Both give the same numbers (checked); the goal is sweep wall time <= 0.4x the per-job total.

Trajectory: a ``tiny`` GPT-NeoX trained for 120 steps on the built-in corpus, 6 checkpoints.
Usage: python bench/bench_sweep.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_BLOCKS, CALIB = 32, 32
METHODS, BITS, GROUP = ("rtn", "gptq"), (3, 4), 128


def train(out: Path) -> Path:
    from qrobust.api import train as api_train
    cfg = {"name": "bench", "out": str(out / "run"), "steps": 120, "batch_size": 8, "checkpoint_every": 20, "seed": 0,
           "data": {"corpus": "builtin", "max_chars": 1_000_000, "seq_len": 128, "vocab_size": 1024},
           "model": {"arch": "gpt_neox", "preset": "tiny"}, "optim": {"lr": 3e-3},
           "schedule": {"kind": "constant", "warmup_steps": 10}}
    api_train(cfg, progress=False)
    return out / "run"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from qrobust.sweeps import Store
    from qrobust.trajectory import load_trajectory
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run = train(tmp)
        traj = load_trajectory(run)
        assert len(traj) >= 6
        cfg = {"trajectory": str(run), "out": str(tmp / "res"), "methods": list(METHODS), "bits": list(BITS),
               "group_sizes": [GROUP], "eval": {"n_blocks": N_BLOCKS}, "calibration": {"n_samples": CALIB}}
        (tmp / "sweep.yaml").write_text(json.dumps(cfg))
        qrobust = [sys.executable, "-m", "qrobust.cli"]
        t0 = time.perf_counter()
        subprocess.run(qrobust + ["sweep", str(tmp / "sweep.yaml"), "--quiet"], check=True, capture_output=True)
        sweep_s = time.perf_counter() - t0
        recs = {(r.checkpoint.name, r.checkpoint.run, r.variant.method, r.variant.bits):
                r.metrics for r in Store(tmp / "res", create=False).records()}
        t0 = time.perf_counter()
        per_job: dict[tuple, dict] = {}
        for ck in traj:
            for m in METHODS:
                for b in BITS:
                    out = subprocess.run(qrobust + ["eval", ck.path, "--method", m, "--bits", str(b), "--group-size",
                                                    str(GROUP), "--n-blocks", str(N_BLOCKS), "--calib-samples",
                                                    str(CALIB), "--json"], check=True, capture_output=True, text=True)
                    per_job[(ck.name, ck.run, m, b)] = json.loads(out.stdout)
        jobs_s = time.perf_counter() - t0
    same = all(abs(per_job[k]["loss_q"] - recs[k].loss_q) <= 1e-9 * abs(recs[k].loss_q)
               and abs(per_job[k]["loss_fp"] - recs[k].loss_fp) <= 1e-9 * abs(recs[k].loss_fp) for k in recs)
    res = {"checkpoints": len(traj), "jobs": len(per_job), "sweep_s": sweep_s, "one_process_per_job_s": jobs_s,
           "ratio": sweep_s / jobs_s, "identical_numbers": same and len(recs) == len(per_job)}
    for k, v in res.items():
        print(f"{k:24s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
