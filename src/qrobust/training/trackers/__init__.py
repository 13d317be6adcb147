"""Experiment trackers by name (``logging: [jsonl, tensorboard, wandb]``): the contract and registry in
:mod:`.base`, one module per tracker. Importing the package registers the built-in ones (the imports
below); tensorboard and wandb themselves are imported only when their tracker is opened."""
from .base import (TRACKERS, FanOut, Tracker, TrackerContext, check_trackers, open_trackers, register_tracker,
                   series_name)
from .jsonl_log import log_path
from .tensorboard_events import events_dir
from .wandb_run import run_id, wandb_mode

__all__ = ["TRACKERS", "FanOut", "Tracker", "TrackerContext", "check_trackers", "open_trackers",
           "register_tracker", "series_name", "log_path", "events_dir", "run_id", "wandb_mode"]
