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


def evaluate_tasks(model: nn.Module, tokenizer, names: list[str], yaml_dir: Path | None, num_fewshot: int = 0,
                   limit: int | None = None, batch_size: int | str = "auto", seed: int = 0,
                   backend: Backend = "hf", trust_remote_code: bool = False) -> dict[str, Any]:
    """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}} for the model as it is now (FP or quantized).
    ``trust_remote_code`` is handed to lm-eval's model (the user's choice, never a prompt)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise QrobustError("downstream tasks need lm-evaluation-harness: pip install 'qrobust[tasks]'") from None
    check_backend(backend)
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    make_lm = _vllm_lm if backend == "vllm" else _hf_lm
    try:
        with contextlib.ExitStack() as stack:
            with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints; stdout may carry our JSON
                lm = stack.enter_context(make_lm(model, tokenizer, batch_size, seed, trust_remote_code))
            tm = _task_manager(TaskManager, str(yaml_dir) if yaml_dir and yaml_dir.is_dir() else None)
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    out = simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                          task_manager=tm,
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
