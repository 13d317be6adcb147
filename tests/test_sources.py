"""Trajectory sources: local folders, a locally built Hugging Face cache (offline), presets, selection, CLI."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from qrobust.cli import main
from qrobust.errors import CheckpointError, ConfigError
from qrobust.sources import load_source, lr_at, resolve_checkpoint
from qrobust.trajectory import Checkpoint


def _fake_ckpt(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def test_folders_by_glob_sorted_by_step(tmp_path):
    for n in ("ckpt-100", "ckpt-20", "ckpt-3", "notes"):
        (_fake_ckpt(tmp_path / n) if n != "notes" else (tmp_path / n)).mkdir(exist_ok=True)
    t = load_source(str(tmp_path / "ckpt-*"))
    assert [c.step for c in t] == [3, 20, 100] and t.checkpoints[0].path == str((tmp_path / "ckpt-3").resolve())
    t = load_source({"source": f"folders:{tmp_path}/ckpt-*", "step_pattern": r"ckpt-(\d+)", "every": 10})
    assert [c.step for c in t] == [20, 100]  # every 10 steps, plus the last


def test_folders_bad_input_is_one_line(tmp_path):
    _fake_ckpt(tmp_path / "a-1-x")
    _fake_ckpt(tmp_path / "b-1-x")
    with pytest.raises(CheckpointError, match="two folders .* have step 1"):
        load_source({"source": str(tmp_path / "*-x"), "step_pattern": r"-(\d+)-"})
    with pytest.raises(CheckpointError, match="cannot read a step"):
        load_source({"source": str(tmp_path / "*-x"), "step_pattern": r"step(\d+)"})
    with pytest.raises(CheckpointError, match="no checkpoint folders"):
        load_source(str(tmp_path / "nothing-*"))


def _hub_cache(root: Path, repo: str, revs: dict[str, Path | None]) -> Path:
    """The HF cache layout: models--org--name/refs/<rev> holds a commit hash; snapshots/<hash>/ the files."""
    folder = root / ("models--" + repo.replace("/", "--"))
    for i, (rev, src) in enumerate(revs.items()):
        commit = f"{i:040x}"
        ref = folder / "refs" / rev
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        snap = folder / "snapshots" / commit
        if src is not None:
            shutil.copytree(src, snap)
        else:
            _fake_ckpt(snap)
    return folder


def test_hub_revisions_from_a_local_cache_offline(tiny_run, tmp_path, monkeypatch):
    cks = tiny_run / "checkpoints" / "main"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_cache(tmp_path / "hub", "org/tiny", {"step4": cks / "step-0000004", "step8": cks / "step-0000008",
                                              "main": cks / "step-0000012"})
    t = load_source("hf:org/tiny")
    assert [(c.revision, c.step) for c in t] == [("step4", 4), ("step8", 8)]  # "main" is not a checkpoint
    local = resolve_checkpoint(t.checkpoints[1])
    assert (local / "config.json").is_file() and local.parent.name == "snapshots"
    from qrobust.models import load_checkpoint
    load_checkpoint(local)
    with pytest.raises(CheckpointError, match="not in the local HF cache .* HF_HUB_OFFLINE is set"):
        load_source("hf:org/tiny@step999")  # a named revision must exist offline (tests/test_preset_sweep.py)
    missing = Checkpoint(name="step999", path="hf://org/tiny@step999", step=999, repo="org/tiny", revision="step999")
    with pytest.raises(CheckpointError, match="not in the local HF cache .* HF_HUB_OFFLINE is set"):
        resolve_checkpoint(missing)


def test_sweep_over_hub_revisions_offline(tiny_run, tmp_path, monkeypatch):
    from qrobust.api import sweep
    from qrobust.results.store import Store
    cks = tiny_run / "checkpoints" / "main"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_cache(tmp_path / "hub", "org/tiny", {"step4": cks / "step-0000004", "step8": cks / "step-0000008"})
    s = sweep({"trajectory": "hf:org/tiny@step4,step8", "out": str(tmp_path / "res"), "bits": [4],
               "group_sizes": [16], "eval": {"n_blocks": 4}}, progress=False)
    assert s.records_written == 2
    recs = Store(tmp_path / "res", create=False).records()
    assert sorted((r.checkpoint.repo, r.checkpoint.revision) for r in recs) == [
        ("org/tiny", "step4"), ("org/tiny", "step8")]


def test_pythia_preset_facts():
    t = load_source("preset:pythia-160m")
    assert len(t) == 154  # 0, 1, 2, 4, ..., 512 and every 1000 steps to 143000
    c = {c.step: c for c in t}
    assert c[1000].revision == "step1000" and c[1000].tokens == 1000 * 2_097_152
    assert c[0].lr == 0.0 and c[1000].lr == pytest.approx(6e-4 * 1000 / 1430)  # 1 % warmup = 1430 steps
    assert c[143000].lr == pytest.approx(6e-5)  # cosine to 10 % of peak
    mid = 1430 + (143000 - 1430) / 2  # halfway through the cosine: (peak + final) / 2
    assert lr_at({"kind": "cosine", "total_steps": 143000, "warmup_frac": 0.01, "final_lr_ratio": 0.1},
                 6e-4, mid)[0] == pytest.approx(3.3e-4)
    assert {c.phase for c in t} == {"warmup", "decay"}


def test_olmo2_names_parsed_from_cached_refs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_cache(tmp_path / "hub", "allenai/OLMo-2-0425-1B",
               {"stage1-step1000-tokens3B": None, "stage1-step2000-tokens5B": None,
                "stage2-ingredient2-step500-tokens2B": None, "main": None, "unrelated": None})
    t = load_source("preset:olmo2-1b")
    got = [(c.run, c.step, c.tokens, c.phase, c.parent) for c in t]
    assert got == [("main", 1000, 3 * 10 ** 9, "stable", None), ("main", 2000, 5 * 10 ** 9, "stable", None),
                   ("ingredient2", 500, 2 * 10 ** 9, "decay", "main")]
    assert load_source("preset:olmo2-1b?run=ingredient2").checkpoints[0].step == 500


def test_smollm3_wsd_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mid = (4_198_000 + 4_720_000) // 2
    _hub_cache(tmp_path / "hub", "HuggingFaceTB/SmolLM3-3B-checkpoints",
               {"stage1-step-40000": None, f"stage3-step-{mid}": None})
    a, b = load_source("preset:smollm3-3b").checkpoints
    assert a.tokens == 40000 * 2_359_296 and a.phase == "stable" and a.lr == pytest.approx(2e-4)
    assert b.phase == "decay" and b.lr == pytest.approx(1e-4)  # linear decay to 0, halfway


def test_one_minus_sqrt_cooldown():
    s = {"kind": "wsd", "warmup_steps": 0, "decay_start": 100, "decay_end": 200, "decay": "1-sqrt"}
    assert lr_at(s, 1.0, 125)[0] == pytest.approx(1 - math.sqrt(0.25))


def test_selection_and_bad_specs():
    assert [c.step for c in load_source("preset:pythia-160m?steps=0,512,143000")] == [0, 512, 143000]
    assert [c.step for c in load_source("preset:pythia-160m?max=3")] == [0, 71000, 143000]
    with pytest.raises(ConfigError, match="unknown preset"):
        load_source("preset:pythia-7b")
    with pytest.raises(ConfigError, match="unknown trajectory selection"):
        load_source("preset:pythia-160m?each=3")
    with pytest.raises(ConfigError, match="leaves no checkpoint"):
        load_source("preset:pythia-160m?steps=7")


def test_cli_trajectory_list(tiny_run, capsys):
    assert main(["trajectory", "list", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "step-0000012" in out and "checkpoints in 2 run(s)" in out
    assert main(["trajectory", "list", "--presets"]) == 0
    assert "preset:pythia-160m" in capsys.readouterr().out
    assert main(["trajectory", "list", "preset:nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown preset 'nope'" in err and "\n" not in err


def test_amber_apertus_open_sci_ref_presets(tmp_path, monkeypatch):
    amber = load_source("preset:amber-7b")
    assert len(amber) == 360 and amber.checkpoints[-1].revision == "ckpt_359"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_cache(tmp_path / "hub", "swiss-ai/Apertus-8B-2509", {"step50000-tokens210B": None, "main": None})
    (c,) = load_source("preset:apertus-8b").checkpoints
    assert (c.step, c.tokens, c.lr, c.phase) == (50000, 210 * 10 ** 9, None, None)  # cooldown start not encoded
    _hub_cache(tmp_path / "hub", "open-sci/open-sci-ref-v0.01-1.7b-nemotron-hq-1T-4096-lr4e-3",
               {"iter_0010000": None, "iter_0020000": None, "iter_20000": None})
    assert [c.step for c in load_source("preset:open-sci-ref-1.7b")] == [10000, 20000]  # 7-digit names only


def test_selection_query_on_a_local_run_folder(tiny_run, tmp_path):
    from qrobust.sources import load_source
    assert [c.step for c in load_source(f"{tiny_run}?run=main")] == [4, 8, 12]
    assert [c.name for c in load_source(f"{tiny_run}?run=decay8&max=1")] == ["decay8/step-0000012"]
    odd = tmp_path / "a?b"  # a '?' that is part of the folder name is not a query
    odd.mkdir()
    import shutil
    shutil.copytree(tiny_run / "checkpoints" / "main" / "step-0000004", odd / "ck")
    assert load_source(str(odd / "ck")).checkpoints[0].step == 4
