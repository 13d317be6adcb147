"""Run lm-evaluation-harness on a model object (no hub access: the checkpoint's own tokenizer and local
task files), and keep acc / acc_norm with their standard errors per task.

Two backends: ``hf`` (lm-eval's HFLM on the in-memory model, the default) and ``vllm`` (optional, when
vLLM is installed: the model as it is now, FP or fake-quantized, is saved to a temporary folder and
lm-eval's vLLM model type serves it; faster on GPUs for big task sets, same weights)."""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from ..errors import QrobustError

Backend = Literal["hf", "vllm"]
BACKENDS: tuple[str, ...] = ("hf", "vllm")


_MANAGERS: dict[str | None, Any] = {}


def _task_manager(cls, include: str | None):
    """lm-eval indexes its thousands of task files on construction (seconds): build one per folder."""
    if include not in _MANAGERS:
        _MANAGERS[include] = cls(include_path=include)
    return _MANAGERS[include]


def _vllm_class():
    """lm-eval's vLLM model type; importing it imports vLLM (separate so tests can stand one in)."""
    from lm_eval.models.vllm_causallms import VLLM
    return VLLM


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_backend(backend: str) -> None:
    """One line when the backend is unknown or its package is missing."""
    if backend not in BACKENDS:
        raise QrobustError(f"unknown tasks backend '{backend}': use one of {', '.join(BACKENDS)}")
    if backend == "vllm" and not _vllm_installed():
        raise QrobustError("tasks backend 'vllm' needs vLLM: pip install 'qrobust[vllm]' (or use the default "
                           "backend 'hf')")


_VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@contextlib.contextmanager
def _vllm_lm(model: nn.Module, tokenizer, batch_size: int | str, seed: int,
             trust_remote_code: bool = False) -> Iterator[Any]:
    """vLLM serving the model's current weights: saved (safetensors + tokenizer) to a temporary folder that
    lives as long as the engine. A model on the GPU waits on the CPU meanwhile, so the GPU holds one copy."""
    from ..models import save_checkpoint
    from .tasks import model_context

    device = next(model.parameters()).device
    dtype = _VLLM_DTYPES.get(next(model.parameters()).dtype, "auto")
    with tempfile.TemporaryDirectory(prefix="qrobust-vllm-") as tmp:
        folder = save_checkpoint(model, tokenizer, Path(tmp) / "model")
        if device.type != "cpu":
            model.to("cpu")
            torch.cuda.empty_cache()
        lm = None
        try:
            lm = _vllm_class()(pretrained=str(folder), tokenizer=str(folder), dtype=dtype, batch_size=batch_size,
                               seed=seed, max_model_len=model_context(model),
                               trust_remote_code=bool(trust_remote_code))
            yield lm
        finally:
            del lm
            gc.collect()
            if device.type != "cpu":
                torch.cuda.empty_cache()
                model.to(device)


@contextlib.contextmanager
def _hf_lm(model: nn.Module, tokenizer, batch_size: int | str, seed: int,
           trust_remote_code: bool = False) -> Iterator[Any]:
    """lm-eval's HFLM on the in-memory model (no copy)."""
    del seed  # HFLM takes its seeds from simple_evaluate
    from lm_eval.models.huggingface import HFLM
    yield HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
               device=str(next(model.parameters()).device), trust_remote_code=bool(trust_remote_code))


@dataclass(frozen=True)
class TaskOptions:
    """How lm-eval runs the tasks (the settings of :class:`~qrobust.config.TasksConfig` but the names, and
    the permission to run the tokenizer's / model's own code)."""

    num_fewshot: int = 0
    limit: int | None = None  # items per task (None: all)
    batch_size: int | str = "auto"
    seed: int = 0
    backend: Backend = "hf"
    trust_remote_code: bool = False


def task_options(options: TaskOptions | None, settings: dict[str, Any]) -> TaskOptions:
    """``options`` with keyword settings applied; an unknown keyword is one line naming the known ones."""
    known = [f.name for f in fields(TaskOptions)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise QrobustError(f"unknown task option '{unknown[0]}'; known: {', '.join(known)}")
    return replace(options or TaskOptions(), **settings)


def evaluate_tasks(model: nn.Module, tokenizer, names: list[str], yaml_dir: Path | None, *,
                   options: TaskOptions | None = None, **settings: Any) -> dict[str, Any]:
    """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}} for the model as it is now (FP or quantized).
    ``settings``: fields of :class:`TaskOptions` (num_fewshot, limit, batch_size, seed, backend,
    trust_remote_code: handed to lm-eval's model, the user's choice, never a prompt)."""
    opts = task_options(options, settings)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise QrobustError("downstream tasks need lm-evaluation-harness: pip install 'qrobust[tasks]'") from None
    check_backend(opts.backend)
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    make_lm = _vllm_lm if opts.backend == "vllm" else _hf_lm
    seed = opts.seed
    try:
        with contextlib.ExitStack() as stack:
            with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints; stdout may carry our JSON
                lm = stack.enter_context(make_lm(model, tokenizer, opts.batch_size, seed, opts.trust_remote_code))
            tm = _task_manager(TaskManager, str(yaml_dir) if yaml_dir and yaml_dir.is_dir() else None)
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    out = simple_evaluate(model=lm, tasks=names, num_fewshot=opts.num_fewshot, limit=opts.limit,
                                          task_manager=tm,
                                          bootstrap_iters=1,  # mean metrics: closed-form stderr, no resampling
                                          verbosity="ERROR", random_seed=seed, numpy_random_seed=seed,
                                          torch_random_seed=seed, fewshot_random_seed=seed)
            except Exception as e:  # unknown task, unreachable data set, ...
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise QrobustError(f"lm-eval could not run tasks {names}: {first}") from None
    finally:
        model.train(was_training)
    return {task: _task_row(out, task, r) for task, r in (out or {}).get("results", {}).items()}


def _task_row(out: dict[str, Any], task: str, r: dict[str, Any]) -> dict[str, Any]:
    """acc / acc_norm and their standard errors of one task, and the items it scored."""
    row = {k.split(",")[0]: v for k, v in r.items() if k.split(",")[0] in
           ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
    row = {k: (float(v) if isinstance(v, (int, float)) else None) for k, v in row.items()}
    row["n"] = (out.get("n-samples") or {}).get(task, {}).get("effective")
    for m in ("acc", "acc_norm"):  # standard error of a mean of 0/1 outcomes, when lm-eval gave none
        if row.get(m) is not None and row.get(f"{m}_stderr") is None and row["n"] and row["n"] > 1:
            row[f"{m}_stderr"] = math.sqrt(row[m] * (1 - row[m]) / (row["n"] - 1))
    return row


def accuracy_drop(fp: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    """Per task: quantized − FP accuracy (points) and relative drop 1 − acc_q / acc_fp."""
    out = {}
    for task, f in fp.items():
        if task not in q or f.get("acc") is None or q[task].get("acc") is None:
            continue
        out[task] = {"acc_fp": f["acc"], "acc_q": q[task]["acc"], "delta": q[task]["acc"] - f["acc"],
                     "rel_drop": 1 - q[task]["acc"] / f["acc"] if f["acc"] else None}
    return out
