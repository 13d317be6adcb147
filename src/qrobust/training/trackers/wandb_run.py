"""The ``wandb`` tracker: a Weights & Biases run per training run, offline unless credentials exist.

It never prompts: with no credentials configured (no ``WANDB_API_KEY``, no netrc entry for the wandb host)
and no ``WANDB_MODE`` set, the run is written offline under ``out/logs/wandb`` (``wandb sync`` uploads it
later); an explicit ``WANDB_MODE=online`` without credentials is one error line instead of a login prompt.
The run id is a hash of the output folder and the run name, so a resumed run continues the same wandb run.
Console output, system-metric sampling, git/code capture and the package list are switched off.
"""
from __future__ import annotations

import hashlib
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from ...errors import QrobustError
from .base import TrackerContext, missing_package, present, register_tracker, series_name

DEFAULT_HOST = "https://api.wandb.ai"


def run_id(out: Path, run: str) -> str:
    """The wandb run id of ``run`` in the output folder ``out``: the same on every resume."""
    return hashlib.sha256(f"{Path(out).resolve()}\n{run}".encode()).hexdigest()[:16]


def netrc_file(env: Mapping[str, str]) -> Path | None:
    """The netrc file wandb reads: ``$NETRC``, else ``~/.netrc``, else ``~/_netrc``; None if none exists."""
    if env.get("NETRC"):
        candidates = [Path(env["NETRC"]).expanduser()]
    else:
        candidates = [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    return next((p for p in candidates if p.is_file()), None)


def has_credentials(env: Mapping[str, str]) -> bool:
    """Whether wandb could log in without asking: an API key in the environment or a netrc entry with a
    password for the wandb host (``WANDB_BASE_URL``, default api.wandb.ai)."""
    if env.get("WANDB_API_KEY"):
        return True
    path = netrc_file(env)
    if path is None:
        return False
    host = urlparse(env.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(env: Mapping[str, str]) -> str:
    """``WANDB_MODE`` when set, else ``online`` with credentials and ``offline`` without."""
    mode = env.get("WANDB_MODE")
    if mode:
        if mode == "online" and not has_credentials(env):
            raise QrobustError("WANDB_MODE=online but no wandb credentials are configured; run `wandb login` "
                               "or set WANDB_API_KEY, or unset WANDB_MODE to write the run offline")
        return mode
    return "online" if has_credentials(env) else "offline"


def quiet_settings(wandb, mode: str):
    """wandb settings for an unattended run: no console capture or output, no system metrics, no git or
    code capture, no package list."""
    return wandb.Settings(mode=mode, silent=True, quiet=True, console="off", disable_git=True,
                          disable_code=True, save_code=False, x_disable_stats=True, x_disable_machine_info=True,
                          x_save_requirements=False)


class WandbTracker:
    """Logs each step's metrics as one history row (``train/loss``, ``train/lr``, ...) at that step."""

    def __init__(self, ctx: TrackerContext) -> None:
        try:
            import wandb
        except ImportError:
            raise missing_package("wandb", "wandb") from None
        self.wandb = wandb
        folder = ctx.logs / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        mode = wandb_mode(os.environ)
        try:
            self.run = wandb.init(project=ctx.project, name=ctx.run, id=run_id(ctx.out, ctx.run), resume="allow",
                                  dir=str(folder), config=dict(ctx.config), settings=quiet_settings(wandb, mode),
                                  reinit="create_new")
        except Exception as e:  # wandb's own errors (auth, server, settings) become one line
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise QrobustError(f"wandb could not start run '{ctx.run}' ({mode}): {reason}; "
                               "set WANDB_MODE=offline to write it offline") from None

    def log(self, step: int, metrics: Mapping[str, float | None]) -> None:
        row = {series_name(k): float(v) for k, v in present(metrics).items()}
        if row:
            self.run.log(row, step=step)

    def flush(self) -> None:
        """Nothing to do: wandb's service process writes (or sends) the history as it arrives."""

    def close(self) -> None:
        """Finish the run, then (when no other wandb run is current in this process) stop wandb's service
        process: ``finish`` returns before that process has written the offline run file out, and the
        service's teardown waits for it, so the run file is complete when ``close`` returns."""
        self.run.finish()
        if self.wandb.run is None:
            self.wandb.teardown()


@register_tracker("wandb")
def open_wandb(ctx: TrackerContext) -> WandbTracker:
    return WandbTracker(ctx)
