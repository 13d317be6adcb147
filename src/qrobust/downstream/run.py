"""Run lm-evaluation-harness on a model object (no hub access: the checkpoint's own tokenizer and local
task files), and keep acc / acc_norm with their standard errors per task."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import QrobustError


_MANAGERS: dict[str | None, Any] = {}


def _task_manager(cls, include: str | None):
    """lm-eval indexes its thousands of task files on construction (seconds): build one per folder."""
    if include not in _MANAGERS:
        _MANAGERS[include] = cls(include_path=include)
    return _MANAGERS[include]


def evaluate_tasks(model: nn.Module, tokenizer, names: list[str], yaml_dir: Path | None, num_fewshot: int = 0,
                   limit: int | None = None, batch_size: int | str = "auto", seed: int = 0) -> dict[str, Any]:
    """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}} for the model as it is now (FP or quantized)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise QrobustError("downstream tasks need lm-evaluation-harness: pip install 'qrobust[tasks]'") from None
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                      device=str(next(model.parameters()).device))
        tm = _task_manager(TaskManager, str(yaml_dir) if yaml_dir and yaml_dir.is_dir() else None)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints; stdout may carry our JSON
                out = simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
                                      bootstrap_iters=1,  # mean metrics: closed-form stderr, no resampling
                                      verbosity="ERROR", random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed)
        except Exception as e:  # unknown task, unreachable data set, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise QrobustError(f"lm-eval could not run tasks {names}: {first}") from None
    finally:
        model.train(was_training)
    res: dict[str, Any] = {}
    for task, r in (out or {}).get("results", {}).items():
        row = {k.split(",")[0]: v for k, v in r.items() if k.split(",")[0] in
               ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        row = {k: (float(v) if isinstance(v, (int, float)) else None) for k, v in row.items()}
        row["n"] = (out.get("n-samples") or {}).get(task, {}).get("effective")
        for m in ("acc", "acc_norm"):  # standard error of a mean of 0/1 outcomes, when lm-eval gave none
            if row.get(m) is not None and row.get(f"{m}_stderr") is None and row["n"] and row["n"] > 1:
                row[f"{m}_stderr"] = math.sqrt(row[m] * (1 - row[m]) / (row["n"] - 1))
        res[task] = row
    return res


def accuracy_drop(fp: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    """Per task: quantized − FP accuracy (points) and relative drop 1 − acc_q / acc_fp."""
    out = {}
    for task, f in fp.items():
        if task not in q or f.get("acc") is None or q[task].get("acc") is None:
            continue
        out[task] = {"acc_fp": f["acc"], "acc_q": q[task]["acc"], "delta": q[task]["acc"] - f["acc"],
                     "rel_drop": 1 - q[task]["acc"] / f["acc"] if f["acc"] else None}
    return out
