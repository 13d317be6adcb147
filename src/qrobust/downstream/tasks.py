"""Which tasks to run, as lm-evaluation-harness task names plus the YAML files of local tasks.

Specs (the built-in task kinds, each registered by name in ``registry.py``):
- ``builtin-nextline[:N]``: an offline multiple-choice task made from the checkpoint's own held-out
  documents (validation split of its training corpus): the first part of a line, and four candidate
  endings (the true one and the endings of three other lines). Seeded, so every checkpoint of a run
  gets the same items.
- ``jsonl:PATH``: a local multiple-choice task, one JSON object per line:
  ``{"query": "...", "choices": ["...", ...], "gold": <index>}``.
- ``preset:paper12``: the paper's 12 tasks (lm-eval names; they download their data sets, so online only).
- any other name: a task lm-eval knows (its data set must be reachable or cached).
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError
from ..io.atomic import write_text
from .registry import TASK_KINDS, TaskContext, register_task_kind, write_mc_task

PAPER_TASKS = ["arc_challenge", "arc_easy", "openbookqa", "piqa", "hellaswag", "winogrande", "mathqa", "pubmedqa",
               "sciq", "social_iqa", "commonsense_qa", "mmlu"]
PAPER_FEWSHOT = 5
TASK_PRESETS: dict[str, list[str]] = {"paper12": PAPER_TASKS}

def check_mc_jsonl(path: Path) -> int:
    """Validate a local multiple-choice file; returns the number of items."""
    if not path.is_file():
        raise DataError(f"task file not found: '{path}'")
    from ..data.corpus import iter_jsonl
    n = 0
    for i, d in iter_jsonl(path):
        ok = (isinstance(d, dict) and isinstance(d.get("query"), str) and isinstance(d.get("choices"), list)
              and len(d["choices"]) >= 2 and all(isinstance(c, str) for c in d["choices"])
              and isinstance(d.get("gold"), int) and 0 <= d["gold"] < len(d["choices"]))
        if not ok:
            raise DataError(f"{path}:{i}: needs {{\"query\": str, \"choices\": [str, str, ...], "
                            "\"gold\": index into choices}")
        n += 1
    if n == 0:
        raise DataError(f"task file '{path}' has no items")
    return n


def nextline_items(docs: list[str], n: int = 200, seed: int = 0,
                   fits: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Line-completion items from held-out documents: query = a line's first part, gold = its ending.
    ``fits(text)`` (e.g. "tokenizes within the model's context") filters out lines and distractors."""
    cands = []
    for d in docs:
        for line in d.splitlines():
            s = line.strip()
            if 20 <= len(s) <= 120 and " " in s[len(s) // 3: 2 * len(s) // 3]:
                cut = s.index(" ", len(s) // 3)
                cands.append((s[:cut], s[cut:]))
    cands = list(dict.fromkeys(cands))  # exact duplicate lines would make ambiguous items
    if fits is not None:
        cands = [c for c in cands if fits(c[0] + c[1])]
    if len(cands) < 8:
        raise DataError(f"only {len(cands)} usable lines in the held-out documents; builtin-nextline needs more text")
    rng = random.Random(seed)
    rng.shuffle(cands)
    items = []
    for query, ending in cands:
        if len(items) == n:
            break
        others = list(dict.fromkeys(e for _, e in rng.sample(cands, 8)
                                    if e != ending and (fits is None or fits(query + e))))[:3]
        if len(others) < 3:
            continue
        choices = others + [ending]
        rng.shuffle(choices)
        items.append({"query": query, "choices": choices, "gold": choices.index(ending), "id": len(items)})
    return items


@register_task_kind("preset")
def preset_tasks(arg: str | None, ctx: TaskContext) -> list[str]:
    """``preset:NAME``: a named list of lm-eval tasks."""
    if arg not in TASK_PRESETS:
        known = ", ".join(f"preset:{k}" for k in sorted(TASK_PRESETS))
        raise ConfigError(f"unknown task preset 'preset:{arg or ''}'; known: {known}")
    return list(TASK_PRESETS[arg])


@register_task_kind("jsonl")
def jsonl_task(arg: str | None, ctx: TaskContext) -> list[str]:
    """``jsonl:PATH``: a local multiple-choice file, checked, as one task."""
    path = Path(arg or "")
    check_mc_jsonl(path)
    name = "qrobust_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10] + "_" + path.stem
    return [write_mc_task(name, path, ctx)]


@register_task_kind("builtin-nextline")
def nextline_task(arg: str | None, ctx: TaskContext) -> list[str]:
    """``builtin-nextline[:N]``: N line-completion items from the checkpoint's held-out documents."""
    n = int(arg.split(":")[0]) if arg is not None else 200
    if ctx.held_out_docs is None:
        raise ConfigError("builtin-nextline needs a checkpoint trained by qrobust (its held-out documents)")
    items = nextline_items(ctx.held_out_docs(), n, fits=ctx.fits)
    path = ctx.work_dir / f"builtin-nextline-{n}.jsonl"  # same docs and fits: same items
    write_text(path, "".join(json.dumps(x) + "\n" for x in items))  # workers may share it
    return [write_mc_task(f"qrobust_builtin_nextline_{n}", path, ctx)]


def resolve_tasks(specs: list[str], work_dir: Path, held_out_docs=None,
                  fits: Callable[[str], bool] | None = None) -> tuple[list[str], Path]:
    """(lm-eval task names, folder of generated task YAMLs) for the given specs.

    ``held_out_docs`` is a callable returning the checkpoint's held-out documents (for builtin tasks);
    ``fits`` keeps generated items within the model's context. A spec of no registered kind is a task
    name lm-eval knows."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = TaskContext(work_dir, work_dir / "task_yaml", held_out_docs, fits)
    names: list[str] = []
    for spec in specs:
        kind, sep, arg = spec.partition(":")
        resolver = TASK_KINDS.get(kind)
        names += resolver(arg if sep else None, ctx) if resolver else [spec]
    if not names:
        raise ConfigError("name at least one task (builtin-nextline, jsonl:PATH, preset:paper12 or an lm-eval task)")
    return names, ctx.yaml_dir


def model_context(model) -> int:
    """Positions the model can attend over (what lm-eval truncates to)."""
    cfg = getattr(model, "config", None)
    for k in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def context_fits(tokenizer, max_tokens: int) -> Callable[[str], bool]:
    """True for text whose tokens fit in ``max_tokens`` (one position kept for the scored shift)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) < max_tokens


def held_out_documents(checkpoint: Path):
    """A callable giving the checkpoint's held-out documents (its training corpus, validation split), or
    None for checkpoints without a qrobust data config."""
    from ..data.blocks import split_documents
    from ..data.corpus import load_documents
    from ..data.evalset import checkpoint_data_config
    cfg = checkpoint_data_config(checkpoint)
    if cfg is None:
        return None

    def docs() -> list[str]:
        return split_documents(load_documents(cfg.corpus, field=cfg.field, max_chars=cfg.max_chars),
                               cfg.val_fraction, cfg.seed)[1]
    return docs
