"""One checkpoint's validation loss, FP and (given a variant) quantized, in memory or layer-streamed, with
optional downstream tasks on both models (``qrobust eval``). Lengths, vocabulary and options are checked
before any model work."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..checks import check_seq_len
from ..data.checkpoint_blocks import eval_blocks
from ..data.tokenizer import load_tokenizer
from ..errors import QrobustError
from ..evaluate import degradation, evaluate_loss
from ..models import check_vocab, load_checkpoint, read_model_config
from ..quant import QuantSpec, quantized
from .checkpoint import as_spec, calibration_for
from .options import CalibrationOptions, EvalOptions, LoadOptions, StreamOptions, TaskOptions


def check_lengths(config: Any, checkpoint: str | Path, blocks: torch.Tensor, calib: torch.Tensor | None) -> None:
    """Evaluation and calibration sequences must fit the model's positions: refused before any work."""
    check_seq_len(config, blocks.shape[1], checkpoint)
    if calib is not None:
        check_seq_len(config, calib.shape[1], checkpoint, "calibration sample length", "--calib-seq-len")


def task_runner(checkpoint: str | Path, model: Any, tok: Any, work: Path, tasks: TaskOptions,
                trust_remote_code: bool) -> Callable[[], dict[str, Any]]:
    """A no-argument callable running the requested downstream tasks on ``model`` as it is when called."""
    from ..downstream.run import evaluate_tasks
    from ..downstream.tasks import context_fits, held_out_documents, model_context, resolve_tasks
    names, yaml_dir = resolve_tasks(list(tasks.names), work, held_out_documents(Path(checkpoint)),
                                    context_fits(tok, model_context(model)))
    return functools.partial(evaluate_tasks, model, tok, names, yaml_dir, num_fewshot=tasks.num_fewshot, limit=tasks.limit,
                             backend=tasks.backend, trust_remote_code=trust_remote_code)


def _streamed(checkpoint: str | Path, spec: QuantSpec, ev: EvalOptions, calibration: CalibrationOptions | None,
              load: LoadOptions, stream: StreamOptions, progress: bool) -> dict[str, Any]:
    from ..quant.pipelines.streamed import describe, streamed_losses
    config = read_model_config(checkpoint)
    check_vocab(config, load_tokenizer(checkpoint, load.trust_remote_code), checkpoint)  # as in memory, before any work
    blocks = eval_blocks(checkpoint, ev.corpus, ev.split, ev.n_blocks, ev.seq_len, ev.field, load.trust_remote_code)
    calib = calibration_for(spec, checkpoint, calibration, load.trust_remote_code)
    check_lengths(config, checkpoint, blocks, calib)
    res = streamed_losses(checkpoint, spec, blocks, ev.batch_size, device=load.device, dtype=load.dtype,
                          trust_remote_code=load.trust_remote_code, progress=progress,
                          calibration=calib, states=stream.states, states_dir=stream.states_dir)
    return {"checkpoint": str(checkpoint), "streamed": True, **describe(res)}


def _quantized_part(model: Any, spec: QuantSpec, calib: torch.Tensor | None, blocks: torch.Tensor,
                    fp_loss: float, run_tasks: Callable[[], dict[str, Any]] | None, where: tuple[str, int, bool]
                    ) -> dict[str, Any]:
    """The quantized model's loss (and tasks) and the degradation from ``fp_loss``; weights restored after."""
    checkpoint, batch_size, progress = where
    out: dict[str, Any] = {}
    with quantized(model, spec, calib) as res:
        q = evaluate_loss(model, blocks, batch_size, progress, desc=spec.label,
                          name=f"checkpoint '{checkpoint}' quantized as {spec.label}")
        if run_tasks is not None:
            out["tasks_q"] = run_tasks()
    return {**out, "variant": spec.label, **degradation(fp_loss, q.loss), **res.summary()}


def _in_memory(checkpoint: str | Path, spec: QuantSpec | None, ev: EvalOptions, calibration: CalibrationOptions | None,
               load: LoadOptions, tasks: TaskOptions | None, progress: bool) -> dict[str, Any]:
    if tasks is not None:
        from ..downstream.run import check_backend
        check_backend(tasks.backend)
    model = load_checkpoint(checkpoint, allow_pickle=load.allow_pickle, trust_remote_code=load.trust_remote_code,
                            dtype=load.dtype, device=load.device)
    tok = load_tokenizer(checkpoint, load.trust_remote_code)
    check_vocab(model, tok, checkpoint)
    blocks = eval_blocks(checkpoint, ev.corpus, ev.split, ev.n_blocks, ev.seq_len, ev.field, load.trust_remote_code)
    calib = calibration_for(spec, checkpoint, calibration, load.trust_remote_code) if spec is not None else None
    check_lengths(model.config, checkpoint, blocks, calib)
    fp = evaluate_loss(model, blocks, ev.batch_size, progress, desc="FP", name=f"checkpoint '{checkpoint}'")
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "n_blocks": int(blocks.shape[0]),
                           "seq_len": int(blocks.shape[1]), "n_tokens": fp.n_tokens, "loss_fp": fp.loss,
                           "ppl_fp": fp.ppl}
    with tempfile.TemporaryDirectory(prefix="qrobust-tasks-") as work:  # generated task files live only here
        run_tasks = task_runner(checkpoint, model, tok, Path(work), tasks, load.trust_remote_code) if tasks else None
        if run_tasks is not None:
            out["tasks_fp"] = run_tasks()
        if spec is not None:
            out.update(_quantized_part(model, spec, calib, blocks, fp.loss, run_tasks,
                                       (str(checkpoint), ev.batch_size, progress)))
    if "tasks_q" in out:
        from ..downstream.run import accuracy_drop
        out["tasks_drop"] = accuracy_drop(out["tasks_fp"], out["tasks_q"])
    return out


def evaluate_checkpoint(checkpoint: str | Path, spec: QuantSpec | Mapping[str, Any] | None = None,
                        eval: EvalOptions | None = None, calibration: CalibrationOptions | None = None,
                        load: LoadOptions | None = None, tasks: TaskOptions | None = None,
                        stream: StreamOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """FP loss of ``checkpoint`` on its held-out blocks and, with ``spec``, the quantized loss and ΔQ L;
    ``tasks``: downstream accuracy of both; ``stream``: layer-streamed, one decoder block in memory."""
    spec = as_spec(spec) if spec is not None else None  # bad options fail before any work
    ev, load = eval or EvalOptions(), load or LoadOptions()
    if tasks is not None and not tasks.names:
        tasks = None
    if stream is not None:
        if spec is None or tasks:
            raise QrobustError("--stream evaluates FP and quantized loss in one pass: give --bits, and no --tasks")
        return _streamed(checkpoint, spec, ev, calibration, load, stream, progress)
    return _in_memory(checkpoint, spec, ev, calibration, load, tasks, progress)
