"""The registries of the lower floors (trajectory sources, averagers, downstream task kinds): an entry
registered from outside the package is the one used, and an unknown name is one line naming the known ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qrobust
from qrobust.averaging import AVERAGERS, AverageJob, AverageOptions, register_averager
from qrobust.averaging.averagers import by_run, one_trajectory
from qrobust.downstream import TASK_KINDS, TaskOptions, register_task_kind, resolve_tasks
from qrobust.downstream.registry import write_mc_task
from qrobust.downstream.run import task_options
from qrobust.errors import ConfigError, QrobustError
from qrobust.sources import SOURCES, load_source, register_source
from qrobust.trajectory import Checkpoint, Trajectory


# ------------------------------------------------------------------------------------------------ sources
def test_a_registered_source_kind_is_used_with_selection(monkeypatch):
    monkeypatch.setitem(SOURCES, "toy", None)  # removed again after the test

    @register_source("toy")
    def toy(spec):
        n = int(spec.target)
        return Trajectory(f"toy{n}", [Checkpoint(f"s{i}", f"/toy/{i}", step=10 * i) for i in range(n)])

    t = load_source("toy:5?every=20")
    assert t.name == "toy5" and [c.step for c in t] == [0, 20, 40]
    assert t.source == "toy:5?every=20"
    assert [c.step for c in load_source({"source": "toy:3", "steps": [10]})] == [10]


def test_unknown_source_kind_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as e:
        load_source("s3:bucket/run")
    msg = str(e.value)
    assert "unknown trajectory source kind 's3'" in msg and "folders, hf, preset" in msg and "\n" not in msg


def test_a_path_with_a_colon_stays_a_path(tmp_path, tiny_run):
    import shutil
    odd = tmp_path / "run:a"
    shutil.copytree(tiny_run / "checkpoints" / "main" / "step-0000004", odd)
    assert load_source(str(odd)).checkpoints[0].step == 4


# ------------------------------------------------------------------------------------------------ averagers
def test_a_registered_averager_is_used_by_the_api(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(AVERAGERS, "last-pair", None)

    @register_averager("last-pair")
    def last_pair(trajs, spec):
        """Per run: 1/4 of the second-to-last checkpoint plus 3/4 of the last."""
        jobs = []
        for run, cks in by_run(one_trajectory(trajs, "last-pair")).items():
            if len(cks) >= 2:
                jobs.append(AverageJob(f"{run}-pair", cks[-1].step, cks[-2:], [0.25, 0.75], cks[-1],
                                       {"averager": "last-pair"}))
        return jobs

    traj = qrobust.average(str(tiny_run), "last-pair", tmp_path / "avg", progress=False)
    made = [c for c in traj if c.run == "main-pair"]
    assert [c.step for c in made] == [12] and traj.runs["main-pair"]["parent"] == "main"
    got = load_file(str(Path(made[0].path) / "model.safetensors"))
    a = load_file(str(tiny_run / "checkpoints" / "main" / "step-0000008" / "model.safetensors"))
    b = load_file(str(tiny_run / "checkpoints" / "main" / "step-0000012" / "model.safetensors"))
    for k, t in got.items():
        assert torch.allclose(t.double(), 0.25 * a[k].double() + 0.75 * b[k].double(), atol=1e-7), k


def test_unknown_averager_and_unknown_option_are_one_line(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown averager 'lawn'; known: ema, greedy-soup, lawa, soup$"):
        qrobust.average(str(tiny_run), "lawn", tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="unknown averaging option 'windw'; known: window, stride"):
        qrobust.average(str(tiny_run), "lawa", tmp_path / "x", windw=2)
    assert not (tmp_path / "x" / "trajectory.json").exists()


def test_typed_options_and_keywords_agree(tiny_run, tmp_path):
    a = qrobust.average(str(tiny_run), "lawa", tmp_path / "a", window=2, runs=["main"],
                        options=AverageOptions(progress=False))
    b = qrobust.average(str(tiny_run), "lawa", tmp_path / "b", window=2, runs=["main"], progress=False)
    assert [(c.run, c.step) for c in a if c.run == "main-lawa2"] == [("main-lawa2", 8), ("main-lawa2", 12)]
    assert [(c.run, c.step) for c in a] == [(c.run, c.step) for c in b]


# ------------------------------------------------------------------------------------------------ task kinds
def test_a_registered_task_kind_is_used(tmp_path, monkeypatch):
    monkeypatch.setitem(TASK_KINDS, "arith", None)

    @register_task_kind("arith")
    def arith(arg, ctx):
        n = int(arg or 4)
        path = ctx.work_dir / f"arith-{n}.jsonl"
        path.write_text("".join(json.dumps({"query": f"{i} + 1 =", "choices": [f" {i}", f" {i + 1}"], "gold": 1})
                                + "\n" for i in range(n)))
        return [write_mc_task(f"qrobust_arith_{n}", path, ctx)]

    names, yaml_dir = resolve_tasks(["arith:3", "hellaswag"], tmp_path / "work")
    assert names == ["qrobust_arith_3", "hellaswag"]  # a spec of no registered kind is an lm-eval task name
    yaml = (yaml_dir / "qrobust_arith_3.yaml").read_text()
    assert "task: qrobust_arith_3" in yaml and str((tmp_path / "work" / "arith-3.jsonl").resolve()) in yaml
    assert len((tmp_path / "work" / "arith-3.jsonl").read_text().splitlines()) == 3


def test_unknown_task_preset_and_task_option_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown task preset 'preset:paper13'; known: preset:paper12$"):
        resolve_tasks(["preset:paper13"], tmp_path)
    with pytest.raises(QrobustError, match="unknown task option 'fewshot'; known: num_fewshot, limit"):
        task_options(None, {"fewshot": 5})
    assert task_options(TaskOptions(seed=3), {"limit": 7}) == TaskOptions(seed=3, limit=7)


def test_a_sweep_names_an_unknown_averager_in_one_line_before_any_work(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown averager 'lawn'; known: ema, greedy-soup, lawa, soup$"):
        qrobust.sweep({"trajectory": str(tiny_run), "out": str(tmp_path / "res"),
                       "average": [{"averager": "lawn"}]}, progress=False)
    assert not any((tmp_path / "res").rglob("*.json"))
