"""Downstream task kinds by name, through a registry (kind -> resolver), like corpora in ``data/corpus.py``.

A task spec ``KIND[:ARG]`` whose KIND is registered is turned by that resolver into lm-evaluation-harness
task names (writing task YAMLs / data files under the work folder when it makes a local task); any other
spec is a task name lm-eval knows. Adding a kind is one module with one ``@register_task_kind("kind")``
function, imported by ``downstream/__init__.py``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..registries import Registry
from ..io.atomic import write_text

_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@dataclass(frozen=True)
class TaskContext:
    """What a resolver may use: the work folder, where task YAMLs go, the checkpoint's held-out documents
    (a callable, None for checkpoints not trained by qrobust) and a filter keeping text within the context."""

    work_dir: Path
    yaml_dir: Path
    held_out_docs: Callable[[], list[str]] | None = None
    fits: Callable[[str], bool] | None = None


Resolver = Callable[[str | None, TaskContext], list[str]]  # (ARG of KIND:ARG or None, context) -> task names
TASK_KINDS: Registry[Resolver] = Registry("task kind")
register_task_kind = TASK_KINDS.register


def write_mc_task(name: str, jsonl: Path, ctx: TaskContext) -> str:
    """Register a local multiple-choice JSONL file as lm-eval task ``name`` (a YAML in the context's folder)."""
    write_text(ctx.yaml_dir / f"{name}.yaml", _YAML.format(name=name, path=json.dumps(str(jsonl.resolve()))))
    return name
