"""The live monitor on the demo's trajectory (issue 18 goal): does the monitored ΔQ L show the F2 rise in the
cooldown branches as the offline sweep does, with the same numbers where the settings are the same?

Trains the demo's FULL config (main run 1200 steps + cooldowns from 400 and 800) with a ``monitor:`` block
(RTN and GPTQ at 2 and 3 bits, g128, every 100 steps on 32 validation blocks, 16 calibration windows), then

1. ``--demo DIR``: checks its checkpoints are bit-identical to the demo's own run in DIR (trained without a
   monitor; use the same ``--threads`` as that run), and puts the demo store's 128-block ΔQ L beside the live one;
2. sweeps the monitored run offline with the monitor's settings (eval.n_blocks 32, calibration.n_samples 16)
   and reports the largest difference between live and offline ΔQ L (0 when they are the same computation);
3. prints the F2 table: ΔQ L at each cooldown endpoint vs the constant-LR run at the same step, live and offline.

    python bench/monitor_f2_live.py --out /tmp/f2live [--demo demo-out] [--threads 1] [--json bench/results/monitor_f2_live.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import qrobust
from qrobust.results.store import Store
from qrobust.workflows.demo import FULL

BITS = [2, 3]
MONITOR = {"every": 100, "n_blocks": 32, "bits": BITS, "group_size": 128, "gptq_every": 1, "calib_samples": 16}


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every checkpoint's weights, by run/step."""
    return {f"{p.parent.parent.name}/{p.parent.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "checkpoints").glob("*/step-*/model.safetensors"))}


def live_values(out: Path) -> dict[tuple[str, int, str], float]:
    """(run, step, variant label) -> ΔQ L from the monitor lines of every run's step log."""
    vals: dict[tuple[str, int, str], float] = {}
    for log in sorted((out / "logs").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            d = json.loads(line)
            for k, v in d.items():
                if k.startswith("monitor/dq/"):
                    vals[(log.stem, d["step"], k.removeprefix("monitor/dq/"))] = v
    return vals


def store_values(results: Path) -> dict[tuple[str, int, str], float]:
    return {(r.checkpoint.run, r.checkpoint.step, r.variant.label): r.metrics.dq_rel
            for r in Store(results, create=False).records() if r.metrics.dq_rel is not None}


def f2_rows(vals: dict[tuple[str, int, str], float], branches: list[str]) -> list[dict]:
    """ΔQ L at each branch's last step vs the main run at that step, per variant."""
    rows = []
    for (run, step, label), dq in sorted(vals.items()):
        last = max(s for (r, s, lb) in vals if r == run and lb == label)
        if run in branches and step == last and ("main", step, label) in vals:
            rows.append({"branch": run, "step": step, "variant": label, "dq_decay": dq,
                         "dq_control": vals[("main", step, label)]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--demo", default=None, help="a `qrobust demo` folder trained with the same --threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = Path(a.out)
    cfg = json.loads(json.dumps(FULL)) | {"out": str(out / "run"), "threads": a.threads, "monitor": MONITOR}
    t0 = time.perf_counter()
    qrobust.train(cfg, progress=False)
    train_s = time.perf_counter() - t0
    live = live_values(out / "run")
    monitor_s = sum(json.loads(ln).get("monitor/seconds", 0.0) for log in (out / "run" / "logs").glob("*.jsonl")
                    for ln in log.read_text().splitlines())
    t1 = time.perf_counter()
    qrobust.sweep({"trajectory": str(out / "run"), "out": str(out / "results"), "methods": ["rtn", "gptq"],
                   "bits": BITS, "group_sizes": [128], "eval": {"n_blocks": 32}, "calibration": {"n_samples": 16},
                   "threads": a.threads}, progress=False)
    sweep_s = time.perf_counter() - t1
    offline = store_values(out / "results")
    common = sorted(set(live) & set(offline))
    diffs = [abs(live[k] - offline[k]) for k in common]
    branches = ["decay400", "decay800"]  # the demo's cooldown runs
    res = {"date": time.strftime("%Y-%m-%d"), "threads": a.threads, "monitor": MONITOR, "train_s": train_s,
           "monitor_s": monitor_s, "sweep_s": sweep_s, "n_live": len(live), "n_compared": len(common),
           "max_abs_diff_live_vs_offline": max(diffs) if diffs else None,
           "f2_live": f2_rows(live, branches), "f2_offline_32": f2_rows(offline, branches)}
    if a.demo:
        demo = Path(a.demo)
        mine, theirs = digest(out / "run"), digest(demo / "run")
        res["bit_identical_to_demo"] = mine == theirs and bool(mine)
        res["n_checkpoints"] = len(mine)
        res["f2_demo_store_128"] = [r for r in f2_rows(store_values(demo / "results"), branches)
                                    if r["variant"] in {f"{m}-w{b}g128" for m in ("rtn", "gptq") for b in BITS}]
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("f2")}, indent=1))
    for key in [k for k in res if k.startswith("f2")]:
        print(f"\n{key}:  branch  step  variant  ΔQ L decay  ΔQ L control")
        for r in res[key]:
            print(f"  {r['branch']:9s} {r['step']:5d}  {r['variant']:12s} {r['dq_decay']:+.4%}  {r['dq_control']:+.4%}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
