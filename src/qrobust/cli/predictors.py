"""The ``predictors`` command: validate the cheap predictors of GPTQ ΔQ L against measured records."""
from __future__ import annotations

import argparse

from .args import bits_arg, positive


def add_predictors(sub) -> None:
    """The ``predictors`` command's arguments."""
    p = sub.add_parser("predictors", help="Spearman ρ / Kendall τ of each predictor vs measured GPTQ ΔQ L",
                       description="For every checkpoint with a --method record at --bits in the results folders, "
                                   "compute each predictor (RTN at the record's group size), then rank-correlate "
                                   "them with the measured ΔQ L, pooled and per run, with bootstrap intervals, and "
                                   "measure how much cheaper each is. Values are cached in --out: a re-run computes "
                                   "only what is missing. 'qrobust report' shows the result.")
    p.add_argument("stores", nargs="+", metavar="STORE", help="results folders (with GPTQ records)")
    p.add_argument("--bits", type=bits_arg, default=3, help="bits of the measured records (default 3)")
    p.add_argument("--method", default="gptq", help="method of the measured records (default gptq)")
    p.add_argument("--predictors", default=None, help="comma-separated predictor names (default: all registered)")
    p.add_argument("--n-blocks", type=positive, default=32, help="evaluation blocks predictors read (default 32)")
    p.add_argument("--calib-samples", type=positive, default=16,
                   help="calibration windows predictors read (default 16)")
    p.add_argument("--out", default=None, help="output folder (default: FIRST_STORE/predictors)")
    p.add_argument("--threads", type=positive, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")


def cmd_predictors(a: argparse.Namespace) -> int:
    from .. import api
    names = [n.strip() for n in a.predictors.split(",") if n.strip()] if a.predictors else None
    s = api.validate_predictors(a.stores, out=a.out, threads=a.threads, progress=not a.quiet, bits=a.bits,
                                method=a.method, predictors=names, n_blocks=a.n_blocks,
                                calib_samples=a.calib_samples)
    print(s["text"])
    where = a.out or f"{a.stores[0]}/predictors"
    print(f"{s['n_checkpoints']} checkpoints ({s['computed']} computed, the rest cached)"
          + (f", {len(s['skipped'])} skipped (folder gone)" if s["skipped"] else "")
          + f"; summary: {where}/summary.json")
    return 0
