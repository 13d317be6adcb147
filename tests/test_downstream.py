"""Downstream accuracy through lm-evaluation-harness on in-memory models, offline: local task files,
the built-in line-completion task, accuracy checked against a slow reference scorer, sweep integration."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qrobust.data.tokenizer import load_tokenizer
from qrobust.downstream import evaluate_tasks, resolve_tasks
from qrobust.downstream.tasks import check_mc_jsonl, context_fits, held_out_documents, model_context, nextline_items
from qrobust.errors import DataError
from qrobust.models import load_checkpoint

pytest.importorskip("lm_eval", reason="downstream tasks need lm-eval: pip install 'qrobust[tasks]'")


def _ck(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "main" / "step-0000012"


@torch.no_grad()
def _reference_acc(model, tok, items) -> float:
    """Slow scorer: sum of log p(choice tokens | query), the choice's tokens being those the tokenizer gives
    the whole string beyond the query's own tokens; argmax vs gold."""
    right = 0
    for it in items:
        ctx = tok(it["query"], add_special_tokens=False)["input_ids"]
        scores = []
        for c in it["choices"]:
            whole = tok(it["query"] + c, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            ids = torch.tensor([whole])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        right += int(max(range(len(scores)), key=scores.__getitem__) == it["gold"])
    return right / len(items)


def _local_task(tiny_run: Path, tmp_path: Path, n: int, seed: int):
    """The tiny checkpoint's model and tokenizer, and a local task of ``n`` line-completion items."""
    ck = _ck(tiny_run)
    model, tok = load_checkpoint(ck), load_tokenizer(ck)
    items = nextline_items(_docs(), n=n, seed=seed, fits=context_fits(tok, model_context(model)))
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    names, yd = resolve_tasks([f"jsonl:{path}"], tmp_path / "work")
    return model, tok, items, names, yd


def test_local_jsonl_task_matches_a_reference_scorer(tiny_run, tmp_path):
    model, tok, items, names, yd = _local_task(tiny_run, tmp_path, n=24, seed=5)
    res = evaluate_tasks(model, tok, names, yd, batch_size=4)
    (r,) = res.values()
    assert r["n"] == 24 and r["acc"] == pytest.approx(_reference_acc(model, tok, items))
    assert r["acc_stderr"] == pytest.approx((r["acc"] * (1 - r["acc"]) / 23) ** 0.5)


def _docs() -> list[str]:
    """Plenty of real lines (the tiny run's own held-out split is a single short document)."""
    from qrobust.data.builtin import builtin_documents
    return builtin_documents(max_chars=100_000)


def test_builtin_nextline_items_are_exact_and_seeded(tiny_run):
    assert held_out_documents(_ck(tiny_run))()  # the checkpoint's held-out documents are reachable
    docs = _docs()
    a, b = nextline_items(docs, 30, seed=1), nextline_items(docs, 30, seed=1)
    assert a == b and len(a) == 30
    lines = {ln.strip() for d in docs for ln in d.splitlines()}
    for it in a:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert it["query"] + it["choices"][it["gold"]] in lines


def test_bad_task_files_are_one_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"query": "a", "choices": ["x"], "gold": 0}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: needs"):
        check_mc_jsonl(p)
    p.write_text("not json\n")
    with pytest.raises(DataError, match="bad.jsonl:1: not valid JSON"):
        check_mc_jsonl(p)
    with pytest.raises(DataError, match="not found"):
        check_mc_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="usable lines"):
        nextline_items(["short\nlines only"], 10)


def test_sweep_with_tasks_fp_once_and_nothing_twice(tiny_run, tmp_path):
    from qrobust.sweeps import sweep
    ck = _ck(tiny_run)
    fits = context_fits(load_tokenizer(ck), model_context(load_checkpoint(ck)))
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in nextline_items(_docs(), n=12, seed=3, fits=fits)))
    out = tmp_path / "res"
    cfg = {"trajectory": f"{tiny_run}?run=decay8", "out": str(out), "bits": [2, 3], "group_sizes": [16],
           "eval": {"n_blocks": 2}, "tasks": {"names": [f"jsonl:{path}"], "batch_size": 8}}
    s = sweep(cfg, progress=False)
    assert (s.records_written, s.task_evals) == (2, 2)
    assert len(list((out / "tasks_fp").glob("*.json"))) == 1  # FP accuracy once per checkpoint
    recs = [json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")]
    for r in recs:
        (d,) = r["drop"].values()
        assert d["delta"] == pytest.approx(d["acc_q"] - d["acc_fp"])
    again = sweep(cfg, progress=False)
    assert (again.task_evals, again.model_loads) == (0, 0)
    from qrobust.reporting import write_report
    names = {p.name for p in write_report(out).parent.glob("tasks_*.png")}
    assert names == {"tasks_t_rtn-w2g16.png", "tasks_t_rtn-w3g16.png"}


def test_cli_eval_with_tasks(tiny_run, tmp_path, capsys):
    from qrobust.cli import main
    ck = _ck(tiny_run)
    fits = context_fits(load_tokenizer(ck), model_context(load_checkpoint(ck)))
    items = nextline_items(_docs(), n=8, seed=2, fits=fits)
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    assert main(["eval", str(ck), "--n-blocks", "2", "--bits", "2", "--group-size", "16", "--tasks",
                 f"jsonl:{path}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (task,) = out["tasks_fp"]
    assert out["tasks_drop"][task]["acc_fp"] == out["tasks_fp"][task]["acc"]
    assert out["tasks_fp"][task]["n"] == 8


class _StandInVLLM:
    """lm-eval's VLLM constructor, served by HFLM from the folder it is given (vLLM itself needs a GPU
    package this machine does not have): proves the saved copy holds the model's current weights."""

    seen: dict = {}

    def __new__(cls, pretrained: str, tokenizer: str, dtype: str, batch_size, seed: int, max_model_len: int,
                trust_remote_code: bool):
        from lm_eval.models.huggingface import HFLM
        cls.seen = {"folder": Path(pretrained), "tokenizer": Path(tokenizer), "dtype": dtype, "seed": seed,
                    "max_model_len": max_model_len, "trust_remote_code": trust_remote_code,
                    "files": sorted(p.name for p in Path(pretrained).iterdir())}
        return HFLM(pretrained=pretrained, tokenizer=tokenizer, dtype=dtype, batch_size=batch_size, device="cpu",
                    max_length=max_model_len)


def test_vllm_backend_serves_the_current_weights(tiny_run, tmp_path, monkeypatch):
    import qrobust.downstream.run as run_mod
    from qrobust.quant import QuantSpec, quantized
    monkeypatch.setattr(run_mod, "_vllm_installed", lambda: True)
    monkeypatch.setattr(run_mod, "_vllm_class", lambda: _StandInVLLM)
    model, tok, items, names, yd = _local_task(tiny_run, tmp_path, n=24, seed=7)
    with quantized(model, QuantSpec(method="rtn", bits=2, group_size=16)):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        hf = evaluate_tasks(model, tok, names, yd, batch_size=4)
        vl = evaluate_tasks(model, tok, names, yd, batch_size=4, seed=3, backend="vllm")
        ref = _reference_acc(model, tok, items)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    (h,), (v,) = hf.values(), vl.values()
    assert v["acc"] == h["acc"] == pytest.approx(ref) and v["acc_norm"] == h["acc_norm"] and v["n"] == 24
    seen = _StandInVLLM.seen
    assert seen["folder"] == seen["tokenizer"] and not seen["folder"].exists()  # temporary, removed after
    assert "model.safetensors" in seen["files"] and "tokenizer.json" in seen["files"]
    assert (seen["dtype"], seen["seed"], seen["max_model_len"], seen["trust_remote_code"]) == (
        "float32", 3, model_context(model), False)


def test_vllm_backend_missing_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    import qrobust.downstream.run as run_mod
    from qrobust.cli import main
    from qrobust.config import TasksConfig
    from qrobust.errors import QrobustError
    monkeypatch.setattr(run_mod, "_vllm_installed", lambda: False)
    ck = _ck(tiny_run)
    with pytest.raises(QrobustError, match=r"needs vLLM: pip install 'qrobust\[vllm\]'"):
        evaluate_tasks(load_checkpoint(ck), load_tokenizer(ck), ["x"], None, backend="vllm")
    assert main(["eval", str(ck), "--tasks", "builtin-nextline", "--tasks-backend", "vllm"]) != 0
    err = capsys.readouterr().err.strip()
    assert "needs vLLM" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    from qrobust.sweeps import sweep
    out = tmp_path / "res"
    with pytest.raises(QrobustError, match="needs vLLM"):
        sweep({"trajectory": str(tiny_run), "out": str(out), "bits": [2], "tasks": {"backend": "vllm"}},
              progress=False)
    assert not out.exists()  # refused before anything was written
    # the default backend keeps the keys of stores written before backends existed
    assert "backend" not in TasksConfig().identity() and TasksConfig(backend="vllm").identity()["backend"] == "vllm"
