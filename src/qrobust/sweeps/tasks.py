"""Downstream tasks of one checkpoint group: the FP model's accuracy once (stored), then per quantized variant."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..data.evalset import checkpoint_data_config
from ..downstream.run import accuracy_drop, evaluate_tasks
from ..downstream.tasks import context_fits, held_out_documents, model_context, resolve_tasks
from ..quant import QuantSpec
from ..results.records import TaskFPRecord, TaskRecord
from .context import Context
from .plan import Job, tasks_work_key


class TaskRunner:
    """Runs the sweep's ``tasks`` on the group's model as it is now (FP, or quantized inside ``quantized()``)."""

    def __init__(self, job: Job, ctx: Context, model: Any, tok: Any):
        self.job, self.ctx, self.model, self.tok = job, ctx, model, tok
        self._fp: TaskFPRecord | None = None
        self._names: tuple[list[str], Path] | None = None

    def _run(self) -> dict[str, Any]:
        t, ck = self.ctx.cfg.tasks, self.job.ck
        if self._names is None:
            ctx = model_context(self.model)
            # one folder per (task specs, training data): checkpoints of a run share generated tasks and
            # lm-eval's task index
            data = checkpoint_data_config(ck.path)
            work = self.ctx.store.root / "tasks_work" / tasks_work_key(t.names, ctx, data)
            self._names = resolve_tasks(t.names, work, held_out_documents(Path(ck.path)), context_fits(self.tok, ctx))
        return evaluate_tasks(self.model, self.tok, *self._names, num_fewshot=t.num_fewshot, limit=t.limit,
                              batch_size=t.batch_size, seed=t.seed, backend=t.backend,
                              trust_remote_code=self.ctx.cfg.trust_remote_code)

    def fp(self) -> Mapping[str, Any]:
        """The FP model's accuracy per task: stored, or measured now (call before quantizing)."""
        if self._fp is None:
            key = self.job.keys.tasks_fp
            got = self.ctx.store.get(key, kind="tasks_fp")
            if not isinstance(got, TaskFPRecord):
                got = TaskFPRecord.new(key, self.job.ck, self._run())
                self.ctx.store.put(got)
            self._fp = got
        return self._fp.tasks

    def quantized(self, spec: QuantSpec) -> None:
        """Measure the quantized model and store its accuracy beside the FP one."""
        fp = self.fp()
        q = self._run()
        ctx = self.ctx
        ctx.store.put(TaskRecord.new(self.job.keys.tasks[spec], self.job.subject(ctx.traj.name), spec,
                                     ctx.cfg.tasks.model_dump(), (fp, q, accuracy_drop(fp, q))))
