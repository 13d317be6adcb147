"""The Plan: its keys are the keys of the records a real sweep writes; against a half-done store it lists
exactly the missing jobs; a damaged record counts as missing and a sweep redoes it; `sweep --dry-run` prints
the plan and writes nothing; executors are a registry that `qrobust.sweep` dispatches through."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qrobust.cli import main
from qrobust.config import SweepConfig, parse_config
from qrobust.errors import ConfigError, QrobustWarning
from qrobust.results.store import Store
from qrobust.sweeps import sweep
from qrobust.sweeps.executors import EXECUTORS, ExecutorOptions, register_executor
from qrobust.sweeps.plan import Plan
from qrobust.sweeps.prepare import sweep_trajectory
from qrobust.sweeps.sets import BlockSets
from qrobust.sweeps.summary import SweepSummary

from conftest import TINY_SWEEP


def _cfg(tiny_run: Path, out: Path, **kw) -> SweepConfig:
    """The reference sweep's config (conftest's TINY_SWEEP), writing to ``out``."""
    return parse_config(SweepConfig, {"trajectory": str(tiny_run), "out": str(out), **TINY_SWEEP, **kw}, "test")


@pytest.fixture
def swept(tiny_results) -> Path:
    return tiny_results


@pytest.fixture
def store(swept, tmp_path) -> Path:
    dst = tmp_path / "res"
    shutil.copytree(swept, dst)
    return dst


def _plan(cfg: SweepConfig) -> Plan:
    traj, pending = sweep_trajectory(cfg)
    return Plan(cfg, traj, list(traj), pending, BlockSets(cfg))


def _stored(root: Path, kind: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (root / kind).glob("*.json")}


def test_the_plan_keys_are_the_keys_a_sweep_writes(tiny_run, store):
    plan = _plan(_cfg(tiny_run, store))
    records, fps = _stored(store, "records"), _stored(store, "fp")
    assert len(plan) == 4 and len(records) == 8 and len(fps) == 4
    planned = {}
    for i in range(len(plan)):
        job = plan.job(i)
        assert job.keys.fp in fps and fps[job.keys.fp]["checkpoint"]["name"] == job.ck.name
        for spec, key in job.keys.variants.items():
            planned[key] = (job.ck.name, spec.label)
        assert job.keys.tasks == {} and job.keys.geometry is None  # the sweep measured neither
    # every stored record is planned, under its own checkpoint and variant
    assert planned == {k: (r["checkpoint"]["name"], r["variant"]["label"]) for k, r in records.items()}
    assert len({plan.job(i).keys.claim for i in range(len(plan))}) == 4  # one claim per group


def test_a_half_done_store_plans_exactly_the_missing_jobs(tiny_run, store):
    records = _stored(store, "records")
    gone = sorted(records)[::3]  # three of eight
    for key in gone:
        (store / "records" / f"{key}.json").unlink()
    plan = _plan(_cfg(tiny_run, store))
    missing = {(ck.name, s.label) for ck, todo in plan.todo(Store(store, create=False)) for s in todo}
    assert missing == {(records[k]["checkpoint"]["name"], records[k]["variant"]["label"]) for k in gone}
    s = sweep(_cfg(tiny_run, store), progress=False)
    assert s.records_written == len(gone) and s.fp_evals == 0 and sorted(s.new_keys) == gone


def test_a_damaged_record_is_redone_by_a_sweep(tiny_run, store):
    key, rec = sorted(_stored(store, "records").items())[0]
    (store / "records" / f"{key}.json").write_text(json.dumps({**rec, "metrics": "gone"}))
    with pytest.warns(QrobustWarning, match=f"{key}.json.*'metrics' is not an object"):
        s = sweep(_cfg(tiny_run, store), progress=False)
    assert s.records_written == 1 and s.new_keys == [key] and s.model_loads == 1
    again = Store(store, create=False).get(key)
    assert again.metrics.dq_rel == rec["metrics"]["dq_rel"] and again.blocks.nll_q == rec["blocks"]["nll_q"]


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_run, store, tmp_path, capsys):
    records = _stored(store, "records")
    gone = sorted(records)[0]
    (store / "records" / f"{gone}.json").unlink()
    cfg_file = tmp_path / "sweep.json"
    cfg_file.write_text(json.dumps(_cfg(tiny_run, store).model_dump()))
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    capsys.readouterr()
    assert main(["sweep", str(cfg_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    name, label = records[gone]["checkpoint"]["name"], records[gone]["variant"]["label"]
    line = next(x for x in out.splitlines() if x.strip().startswith(f"{name} "))
    assert f"1 of 2 stored; missing: {label}" in line
    assert "7 of 8 records stored, 1 missing; 1 checkpoint(s) to load" in out
    fresh = tmp_path / "fresh"
    assert main(["sweep", str(cfg_file), "--out", str(fresh), "--dry-run"]) == 0
    assert "0 of 8 records stored, 8 missing; 4 checkpoint(s) to load" in capsys.readouterr().out
    assert not fresh.exists()


def test_a_registered_executor_is_what_sweep_uses(tiny_run, tmp_path, monkeypatch):
    import qrobust
    seen = []
    monkeypatch.setitem(EXECUTORS, "test-only", None)  # removed again after the test

    @register_executor("test-only")
    def run_here(cfg: SweepConfig, options: ExecutorOptions) -> SweepSummary:
        seen.append((cfg.out, options.progress, options.cpus_per_task))
        return SweepSummary(out=Path(cfg.out), checkpoints=-1)

    s = qrobust.sweep(_cfg(tiny_run, tmp_path / "res").model_dump(), progress=False, executor="test-only",
                      cpus_per_task=3)
    assert s.checkpoints == -1 and seen == [(str(tmp_path / "res"), False, 3)]
    assert not (tmp_path / "res").exists()  # the local executor did not run


def test_an_unknown_executor_is_one_line_naming_the_known_ones(tiny_run, tmp_path):
    import qrobust
    with pytest.raises(ConfigError) as e:
        qrobust.sweep(_cfg(tiny_run, tmp_path / "res").model_dump(), executor="slurmish")
    assert str(e.value) == "unknown executor 'slurmish'; known: array, local, ray"
    with pytest.raises(ConfigError, match="executor 'array' needs"):
        qrobust.sweep(_cfg(tiny_run, tmp_path / "res").model_dump(), executor="array")


def test_cli_executor_is_any_registered_name(tiny_run, tmp_path, capsys):
    """The CLI takes the executor from the registry: a registered one runs, an unknown one is one line."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"trajectory: {tiny_run}\nout: {tmp_path / 'res'}\nbits: [4]\ngroup_sizes: [16]\n")
    seen = []

    @register_executor("from-cli-test")
    def run_here(cfg: SweepConfig, options: ExecutorOptions) -> SweepSummary:
        seen.append(cfg.out)
        return EXECUTORS["local"](cfg, options)

    try:
        assert main(["sweep", str(cfg), "--executor", "from-cli-test", "--quiet"]) == 0
    finally:
        EXECUTORS.pop("from-cli-test")
    assert seen == [str(tmp_path / "res")] and list((tmp_path / "res" / "records").glob("*.json"))
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--executor", "nope", "--quiet"]) == 2
    assert capsys.readouterr().err == "qrobust sweep: error: unknown executor 'nope'; known: array, local, ray\n"
