"""Downstream accuracy: lm-evaluation-harness on in-memory FP and fake-quantized models, offline tasks."""
from .registry import TASK_KINDS, TaskContext, register_task_kind
from .run import TaskOptions, evaluate_tasks
from .tasks import PAPER_TASKS, TASK_PRESETS, resolve_tasks

__all__ = ["PAPER_TASKS", "TASK_KINDS", "TASK_PRESETS", "TaskContext", "TaskOptions", "evaluate_tasks",
           "register_task_kind", "resolve_tasks"]
