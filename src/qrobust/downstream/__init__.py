"""Downstream accuracy: lm-evaluation-harness on in-memory FP and fake-quantized models, offline tasks."""
from .run import evaluate_tasks
from .tasks import PAPER_TASKS, resolve_tasks

__all__ = ["PAPER_TASKS", "evaluate_tasks", "resolve_tasks"]
