"""``qrobust train CFG --nproc N``: check the config here, then start N workers through torchrun's own launcher.

The workers run ``python -m qrobust train CFG`` exactly as ``torchrun --nproc-per-node N -m qrobust train CFG``
would start them (torchrun's ``--nnodes`` / ``--node-rank`` / ``--rdzv-*`` flags pass through; one node without
them is ``--standalone``). Everything that can refuse the run (device, backend, precision, batch layout, a
resume with another global batch) is checked before a worker starts, so bad input is one line here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import TrainConfig
from ..errors import QrobustError
from ..io.atomic import write_text
from .runtime import check_execution
from .loop import check_out_folder

LAUNCHED_ENV = "QROBUST_LAUNCHED"  # set for the workers of ``--nproc``: the launcher prints the summary, not them

def torchrun_args(nproc: int, passthrough: list[str], worker_argv: list[str]) -> list[str]:
    """torchrun's arguments: N workers per node running ``qrobust`` with ``worker_argv``."""
    args = ["--nproc-per-node", str(nproc)]
    if not any(a.split("=")[0] in ("--nnodes", "--rdzv-endpoint", "--master-addr") for a in passthrough):
        args.append("--standalone")
    return [*args, *passthrough, "-m", "qrobust", *worker_argv]


def _nodes(passthrough: list[str]) -> int:
    """The node count of ``--nnodes N`` (or ``N:M``, the minimum), 1 without it."""
    for i, a in enumerate(passthrough):
        if a.startswith("--nnodes"):
            v = a.split("=", 1)[1] if "=" in a else passthrough[i + 1]
            return int(v.split(":")[0])
    return 1


def launch(cfg: TrainConfig, nproc: int, passthrough: list[str], progress: bool = True,
           trust_remote_code: bool = False) -> None:
    """Train ``cfg`` on ``nproc`` processes per node (``passthrough``: torchrun's multi-node flags).

    The workers read the validated config (overrides applied) from ``<out>/torchrun_config.yaml``."""
    if nproc < 1:
        raise QrobustError(f"--nproc must be at least 1, got {nproc}")
    check_execution(cfg, nproc * _nodes(passthrough), nproc)
    out = Path(cfg.out)
    check_out_folder(cfg, out)
    config_file = out / "torchrun_config.yaml"
    write_text(config_file, json.dumps(cfg.model_dump(), indent=1), "training config for the workers")
    worker_argv = ["train", str(config_file), *([] if progress else ["--quiet"]),
                   *(["--trust-remote-code"] if trust_remote_code else [])]
    # one thread per process unless the config says otherwise (torchrun would set 1 and warn about it)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads or max(1, (os.cpu_count() or 1) // nproc)))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run
    before = os.environ.get(LAUNCHED_ENV)
    os.environ[LAUNCHED_ENV] = "1"
    try:
        run(parse_args(torchrun_args(nproc, passthrough, worker_argv)))  # raises when a worker fails
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise QrobustError(f"training stopped: worker rank {rank} exited with code {failure.exitcode} (its own "
                           "error is printed above); re-run the same command to resume from the last checkpoint"
                           ) from None
    finally:
        if before is None:
            os.environ.pop(LAUNCHED_ENV, None)
