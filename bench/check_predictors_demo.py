"""A quick look at the predictors on a finished demo (or any store with GPTQ records at group 128):
Spearman ρ and Kendall τ of each predictor, computed on every checkpoint that has a GPTQ and an RTN
record, against the store's GPTQ ΔQ L. No intervals, no per-run split: the full validation is
``qrobust predictors RESULTS``; this is the developer's check behind the README numbers.

    python bench/check_predictors_demo.py DEMO_OUT [BITS=3] [N_CALIB=16] [PREDICTORS=all, comma-separated]

DEMO_OUT holds ``results/records``; each checkpoint gets 32 held-out blocks (a prefix of the sweep's) and
N_CALIB calibration windows from its training split (seed 0), and the predictors at gptq-w{BITS}g128.
"""
from __future__ import annotations

import glob
import json
import sys

import torch
from scipy.stats import kendalltau, spearmanr

from qrobust.data.checkpoint_blocks import calib_blocks, eval_blocks
from qrobust.models import load_checkpoint
from qrobust.monitor.predictors import PREDICTORS, compute_predictors
from qrobust.quant.registry import QuantSpec


def truths(root: str, bits: int) -> tuple[dict[str, float], dict[str, float]]:
    """GPTQ and RTN ΔQ L by checkpoint path, from the store's records (default options, group 128)."""
    gptq: dict[str, float] = {}
    rtn: dict[str, float] = {}
    for f in glob.glob(f"{root}/results/records/*.json"):
        r = json.load(open(f))
        v = r["variant"]
        if v["bits"] == bits and v["group_size"] == 128 and not v["options"]:
            (gptq if v["method"] == "gptq" else rtn)[r["checkpoint"]["path"]] = r["metrics"]["dq_rel"]
    return gptq, rtn


def main() -> None:
    torch.set_num_threads(1)
    root, bits = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    n_calib = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(PREDICTORS)
    gptq, rtn = truths(root, bits)
    rows = []
    for ck in sorted(c for c in gptq if c in rtn):
        model = load_checkpoint(ck)
        v = compute_predictors(model, names, [QuantSpec("gptq", bits, 128)], calib_blocks(ck, n_samples=n_calib),
                               eval_blocks(ck, n_blocks=32))
        rows.append({"gptq": gptq[ck], "rtn_dq_128_blocks": rtn[ck], **v.values})
    y = [r["gptq"] for r in rows]
    print(f"{len(rows)} checkpoints, GPTQ w{bits}g128 ΔQ L from the store; {n_calib} calibration windows")
    for k in [k for k in rows[0] if k != "gptq"]:
        x = [r[k] for r in rows]
        print(f"{k:36s} rho={spearmanr(x, y)[0]:+.3f} tau={kendalltau(x, y)[0]:+.3f}")


if __name__ == "__main__":
    main()
