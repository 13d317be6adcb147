"""Executors: where the checkpoint groups of a sweep run, as a registry (name -> executor).

``local`` runs them in this process, one after another; ``array`` is one task of a job array (Slurm: see
:func:`.array.slurm_script`), a local worker taking every N-th checkpoint; ``ray`` makes one Ray task per
checkpoint group. Every executor runs the same :func:`~qrobust.sweeps.run.sweep` (or a share of it), so
the numbers are the local ones, and the results folder's claims keep two workers from doing a group twice.
Adding one is one new module with a function decorated ``@register_executor("name")``.
"""
from .registry import EXECUTORS, Executor, ExecutorOptions, get_executor, register_executor, run_executor
from . import array, local, ray  # noqa: E402,F401  (the built-in executors register themselves)
from .array import slurm_script
from .ray import run_ray

__all__ = ["EXECUTORS", "Executor", "ExecutorOptions", "get_executor", "register_executor", "run_executor",
           "run_ray", "slurm_script"]
