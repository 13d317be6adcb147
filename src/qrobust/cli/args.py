"""The CLI's shared argument pieces: a parser with one-line errors, value types whose checks come from
the config models (bits, group size), and the flag groups several commands share."""
from __future__ import annotations

import argparse

from ..config import bits_problem, group_size_problem


FORMATS_MARK = "<FORMATS>"  # replaced in --help by the registered presets (imported only then: they need torch)


def format_names() -> str:
    """The named number formats and weight+activation combinations, from their registries."""
    from ..quant.formats.presets import COMBOS, FORMATS
    return f"presets {', '.join(FORMATS)}; combinations {', '.join(COMBOS)}"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def format_help(self) -> str:
        for action in self._actions:
            if action.help and FORMATS_MARK in action.help:
                action.help = action.help.replace(FORMATS_MARK, format_names())
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def bits_arg(v: str) -> int:
    try:
        b = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(bits_problem(v)) from None
    if bits_problem(b):
        raise argparse.ArgumentTypeError(bits_problem(b))
    return b


def group_arg(v: str) -> int:
    try:
        g = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(group_size_problem(v)) from None
    if group_size_problem(g):
        raise argparse.ArgumentTypeError(group_size_problem(g))
    return g


def positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{v}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def positive_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{v}'") from None
    if not x > 0 or x != x or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return x


def add_quant_args(p: argparse.ArgumentParser, bits_required: bool) -> None:
    p.add_argument("--method", default="rtn", help="quantization method (registry name; default: rtn)")
    p.add_argument("--bits", type=bits_arg, required=bits_required, default=None, help="weight bits, 2..8")
    p.add_argument("--group-size", type=group_arg, default=None,
                   help="columns per quantization group; -1 = one group per output channel (default 128)")
    p.add_argument("--asym", action="store_true", help="asymmetric grid (default: symmetric, as GPTQModel)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (gptq: profile=reference|llmcompressor|gptqmodel, damp=0.01, "
                        "act_order=true, static_groups=true, block_size=128, sequential=false, true_sequential=false, "
                        "quant_grid=reference|compressed-tensors; awq: profile=autoawq|llmcompressor, n_grid=20, "
                        "duo_scaling=false, clip=false, max_shrink=0.5, mapping=generic, "
                        "quant_grid=autoawq|compressed-tensors)")
    p.add_argument("--calib-samples", type=positive, default=128, help="calibration samples (default 128)")
    p.add_argument("--calib-seq-len", type=positive, default=None,
                   help="calibration sample length (default: the training length, at most 2048)")
    p.add_argument("--calib-corpus", default=None, help="calibration corpus spec (default: training split)")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="only quantize matching linears")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching linears")


def add_format_arg(p: argparse.ArgumentParser) -> None:
    """``--format``: a named number format instead of --bits / --group-size / --asym."""
    p.add_argument("--format", dest="number_format", default="", metavar="FORMAT",
                   help="number format instead of --bits/--group-size/--asym: " + FORMATS_MARK + "; or "
                        "<element>-<block>[-<scale>][-asym][-sr] (e.g. fp4-e2m1-g32-e8m0), with activation and "
                        "KV-cache formats appended as WEIGHT+a-ACT+kv-KV (e.g. int4-g128+a-fp8-e4m3-token)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default float32); quantizer math stays fp32")


def add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle weight files (*.bin), read with torch.load(weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's custom model code")



EXAMPLES = """examples:
  qrobust demo --quick                              # ~15 s offline end-to-end run
  qrobust reproduce all                             # the paper's F2/F3/F4/weight-decay experiments + verdicts
  qrobust train experiments/cooldown_tiny.yaml      # checkpoints + trajectory.json in runs/cooldown_tiny
  qrobust sweep experiments/sweep_rtn.yaml          # RTN 3/4-bit on every checkpoint -> results/
  qrobust report results/cooldown_tiny              # figures + index.html
  qrobust results results/cooldown_tiny --format csv
  qrobust trajectory list preset:pythia-160m?every=10000
  qrobust eval runs/cooldown_tiny/checkpoints/main/step-0001200 --bits 3
"""


def version() -> str:
    from .. import __version__
    return f"qrobust {__version__}"
