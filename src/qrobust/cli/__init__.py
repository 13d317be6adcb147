"""Command line: argument parsing and one-line errors only; all work is done through the API.

``args`` (value types, shared flags), ``parsers`` (each command's flags), ``commands`` (each command: flags
-> API call -> printed lines, via ``show``), ``sweep`` (the sweep command with job arrays and Slurm)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from ..errors import QrobustError, QrobustWarning
from . import commands as c
from . import parsers
from .args import EXAMPLES, Parser, version
from .predictors import add_predictors, cmd_predictors
from .sweep import add_sweep, cmd_sweep


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="qrobust", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Measure how robust LM checkpoints are to post-training quantization along their "
                            "training trajectory.\nΔQ L = L(quantized) / L(full precision) - 1.",
                epilog=EXAMPLES)
    ap.add_argument("--version", action="version", version=version())
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    for add in (parsers.add_demo, parsers.add_reproduce, parsers.add_train, parsers.add_quantize, parsers.add_export,
                parsers.add_eval, parsers.add_sharpness, parsers.add_landscape, add_sweep, parsers.add_report,
                parsers.add_results, parsers.add_average, parsers.add_trajectory, parsers.add_data, add_predictors):
        add(sub)
    return ap


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sharpness": c.cmd_sharpness, "landscape": c.cmd_landscape, "demo": c.cmd_demo, "train": c.cmd_train,
    "quantize": c.cmd_quantize, "eval": c.cmd_eval, "sweep": cmd_sweep, "report": c.cmd_report,
    "results": c.cmd_results, "trajectory": c.cmd_trajectory, "average": c.cmd_average,
    "reproduce": c.cmd_reproduce, "export": c.cmd_export, "data": c.cmd_data,
    "predictors": cmd_predictors}


class WarningsAsLines(warnings.catch_warnings):
    """qrobust's own warnings (a skipped unreadable record, ...) as one stderr line each, once per message;
    other libraries' warnings go where they went before."""

    def __init__(self, cmd: str):
        super().__init__()
        self.cmd = cmd

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("always", QrobustWarning)
        seen: set[str] = set()
        before = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, QrobustWarning):
                return before(message, category, filename, lineno, file, line)
            if str(message) not in seen:
                seen.add(str(message))
                print(f"qrobust {self.cmd}: warning: {message}", file=sys.stderr)
        warnings.showwarning = show
        return self


# optional libraries that log import-time noise to stderr (torchao: its CUDA kernels on a CPU machine;
# torch's pytree: torchao's enum registrations), which would break the one-line error contract
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def main(argv: Sequence[str] | None = None) -> int:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.cmd:
        parser.print_help()
        return 2
    try:
        with WarningsAsLines(a.cmd):
            return COMMANDS[a.cmd](a)
    except QrobustError as e:
        print(f"qrobust {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qrobust {a.cmd}: interrupted; finished checkpoints and records are kept, re-run to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except PermissionError as e:
        print(f"qrobust {a.cmd}: error: permission denied: '{e.filename}'; choose a writable location",
              file=sys.stderr)
        return 2
    except OSError as e:
        where = f" '{e.filename}'" if e.filename else ""
        print(f"qrobust {a.cmd}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "build_parser", "main"]
