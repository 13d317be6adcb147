"""Sweeping open-model presets and Hub revisions from an offline HF cache (issue 15, items 1 and 5d).

The cache is built by hand in the layout huggingface_hub reads offline (``models--ORG--NAME/refs/<rev>``
holding a commit hash, ``snapshots/<hash>/`` the files), with a tiny real model + tokenizer saved by
``save_pretrained``: no ``qrobust_state.json``, like any checkpoint qrobust did not train.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qrobust.cli import main
from qrobust.errors import CheckpointError, ConfigError
from qrobust.sources import load_source
from test_cli_errors import run_fail

REPO = "EleutherAI/pythia-14m"
# what src/qrobust/presets/pythia.yaml states, restated: 1024 x 2048 tokens a step; peak 1e-3 for 14m;
# cosine over 143000 steps, 1 % warmup (1430 steps), down to 10 % of peak
TOKENS_PER_STEP = 1024 * 2048
PEAK, TOTAL, WARMUP, FINAL = 1e-3, 143_000, 1430, 1e-4


def _expected(step: int) -> tuple[int, float, str]:
    """(tokens, LR, phase) at ``step`` of Pythia-14m, computed here by hand from the paper's schedule."""
    if step < WARMUP:
        return step * TOKENS_PER_STEP, PEAK * step / WARMUP, "warmup"
    t = (step - WARMUP) / (TOTAL - WARMUP)
    return step * TOKENS_PER_STEP, FINAL + (PEAK - FINAL) * (1 + math.cos(math.pi * t)) / 2, "decay"


def _commit(i: int) -> str:
    return f"{i + 1:040x}"


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory) -> Path:
    """A tiny GPT-NeoX + byte tokenizer saved with ``save_pretrained`` only (no qrobust state)."""
    from qrobust.data.tokenizer import build_tokenizer
    from qrobust.models import build_model
    tok = build_tokenizer("byte", [])
    path = tmp_path_factory.mktemp("foreign") / "model"
    build_model("gpt_neox", "micro", vocab_size=len(tok), max_positions=64).save_pretrained(
        str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    assert not (path / "qrobust_state.json").exists()
    return path


def _cache(root: Path, repo: str, revs: list[str], model: Path, snapshot: bool = True) -> Path:
    """refs/<rev> -> commit, snapshots/<commit>/ a copy of ``model`` (or no snapshot folder at all)."""
    import shutil
    folder = root / ("models--" + repo.replace("/", "--"))
    for i, rev in enumerate(revs):
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / rev).write_text(_commit(i))
        if snapshot:
            shutil.copytree(model, folder / "snapshots" / _commit(i))
    return folder


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, foreign_model) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cache(hub, REPO, ["step1000", "step2000"], foreign_model)
    return hub


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small text corpus (blank-line separated documents) for the eval and calibration sets."""
    from qrobust.data.builtin import builtin_documents
    p = tmp_path / "corpus.txt"
    p.write_text("\n\n".join(d.replace("\n\n", "\n") for d in builtin_documents(120_000)))
    return p


def _sweep_cfg(tmp_path: Path, corpus: Path | None, **over) -> dict:
    cfg = {"trajectory": "preset:pythia-14m?steps=1000,2000", "out": str(tmp_path / "res"), "methods": ["rtn", "gptq"],
           "bits": [4], "group_sizes": [16], "eval": {"n_blocks": 2, "seq_len": 32},
           "calibration": {"n_samples": 4, "seq_len": 32}}
    if corpus is not None:
        cfg["eval"]["corpus"] = f"text:{corpus}"
        cfg["calibration"]["corpus"] = f"text:{corpus}"
    cfg.update(over)
    return cfg


def test_sweep_of_a_preset_from_an_offline_cache(offline_cache, corpus, tmp_path):
    from qrobust.api import sweep
    from qrobust.results.store import Store
    s = sweep(_sweep_cfg(tmp_path, corpus), progress=False)
    assert (s.checkpoints, s.records_written, s.model_loads, s.fp_evals) == (2, 4, 2, 2)
    recs = Store(tmp_path / "res", create=False).records()
    got = sorted((r.checkpoint.revision, r.variant.method) for r in recs)
    assert got == [("step1000", "gptq"), ("step1000", "rtn"), ("step2000", "gptq"), ("step2000", "rtn")]
    for r in recs:
        c = r.checkpoint
        tokens, lr, phase = _expected(c.step)
        assert c.repo == REPO and c.revision == f"step{c.step}" and r.trajectory == "pythia-14m"
        assert c.tokens == tokens and c.lr == pytest.approx(lr, rel=1e-12) and c.phase == phase
        assert r.eval_set.corpus == f"text:{corpus}" and r.eval_set.n_blocks == 2
        assert math.isfinite(r.metrics.dq_rel)
        if c.run == "main" and r.variant.method == "gptq":
            assert r.calibration["corpus"] == f"text:{corpus}"
    assert _expected(1000)[2] == "warmup" and _expected(2000)[2] == "decay"  # both phases are covered
    # the stored trajectory keeps the preset facts apart from a training data config, and reads back
    stored = json.loads((tmp_path / "res" / "trajectories" / "pythia-14m.json").read_text())
    assert stored["data"] is None and stored["provenance"]["preset"] == "pythia"
    from qrobust.reporting.html import write_report
    page = write_report(tmp_path / "res").read_text()
    assert "Open-model preset <b>pythia</b>" in page
    again = sweep(_sweep_cfg(tmp_path, corpus), progress=False)  # resumable: everything is done
    assert (again.records_written, again.model_loads) == (0, 0)


def test_preset_sweep_without_a_corpus_is_one_line_and_writes_nothing(offline_cache, corpus, tmp_path, capsys):
    cfg_path = tmp_path / "sweep.json"
    cfg_path.write_text(json.dumps(_sweep_cfg(tmp_path, None)))
    line = run_fail(capsys, ["sweep", cfg_path], "preset", "pythia-14m", "eval.corpus", "calibration.corpus")
    assert "gptq" in line and "unknown key" not in line
    assert not (tmp_path / "res").exists()  # refused before the store, let alone a checkpoint
    # RTN needs no calibration: only the eval corpus is asked for
    rtn = _sweep_cfg(tmp_path, None, methods=["rtn"])
    rtn["eval"]["corpus"] = f"text:{corpus}"
    cfg_path.write_text(json.dumps({**rtn, "methods": ["rtn"]}))
    assert main(["sweep", str(cfg_path), "--quiet"]) == 0
    # with GPTQ and only an eval corpus, the calibration corpus is named, again before anything is written
    records = sorted(p.name for p in (tmp_path / "res" / "records").rglob("*.json"))
    gptq = {**rtn, "methods": ["rtn", "gptq"]}
    cfg_path.write_text(json.dumps(gptq))
    line = run_fail(capsys, ["sweep", cfg_path], "calibration.corpus (gptq calibrates)")
    assert "eval.corpus" not in line
    assert sorted(p.name for p in (tmp_path / "res" / "records").rglob("*.json")) == records


def test_foreign_hub_and_folder_trajectories_need_a_corpus(offline_cache, foreign_model, tmp_path):
    """The same rule for every trajectory without qrobust training data, not only presets."""
    from qrobust.api import sweep
    for source in (f"hf:{REPO}@step1000,step2000", str(foreign_model)):
        with pytest.raises(ConfigError, match="no training corpus.*set eval.corpus in the sweep config"):
            sweep({"trajectory": source, "out": str(tmp_path / "r"), "bits": [4], "group_sizes": [16]},
                  progress=False)
    assert not (tmp_path / "r").exists()


def test_qrobust_trained_hub_checkpoints_keep_their_own_corpus(tiny_run, tmp_path, monkeypatch):
    """A Hub copy of a qrobust checkpoint carries its training data config: no corpus needs naming."""
    from qrobust.api import sweep
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cache(hub, "org/tiny", ["step4"], tiny_run / "checkpoints" / "main" / "step-0000004")
    s = sweep({"trajectory": "hf:org/tiny@step4", "out": str(tmp_path / "r"), "bits": [4], "group_sizes": [16],
               "eval": {"n_blocks": 2}}, progress=False)
    assert s.records_written == 1


def test_greedy_soup_of_foreign_checkpoints_needs_a_corpus(foreign_model, tmp_path, capsys):
    import shutil
    for i in (1, 2):
        shutil.copytree(foreign_model, tmp_path / "ck" / f"step-{i}")
    args = ["average", "greedy-soup", tmp_path / "ck" / "step-1", tmp_path / "ck" / "step-2", "--out",
            tmp_path / "soup", "--quiet"]
    run_fail(capsys, args, "greedy soup", "--corpus")
    assert not (tmp_path / "soup").exists()
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"document {i}: " + "some words to evaluate on. " * 20 for i in range(40)))
    assert main([str(a) for a in args] + ["--corpus", f"text:{corpus}", "--n-blocks", "2",
                                               "--seq-len", "32"]) == 0
    prov = json.loads(next((tmp_path / "soup").rglob("qrobust_average.json")).read_text())
    assert prov["plan"]["eval"]["corpus"] == f"text:{corpus}"


# ------------------------------------------------------------------------------------------------ item 5d
def test_named_revision_missing_from_the_offline_cache_is_one_line(offline_cache, capsys):
    line = run_fail(capsys, ["trajectory", "list", f"hf:{REPO}@step1000,step3000,step4000"],
                    "step3000", "step4000", str(offline_cache / "models--EleutherAI--pythia-14m"), "HF_HUB_OFFLINE")
    assert "step1000," not in line and "2 of 3" in line
    with pytest.raises(CheckpointError, match="not in the local HF cache"):
        load_source(f"hf:{REPO}@step3000")
    # a revision named by its commit hash is found by its snapshot folder; a cached one lists as before
    assert [c.revision for c in load_source(f"hf:{REPO}@{_commit(1)}")] == [_commit(1)]
    assert main(["trajectory", "list", f"hf:{REPO}@step1000,step2000"]) == 0
    assert "not cached" not in capsys.readouterr().out


def test_ref_without_its_snapshot_is_not_cached(tmp_path, monkeypatch, foreign_model, capsys):
    """refs/<rev> alone (an interrupted download) is not a cached revision: snapshot_download would fail."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cache(hub, "org/half", ["step5"], foreign_model, snapshot=False)
    run_fail(capsys, ["trajectory", "list", "hf:org/half@step5"], "org/half@step5", "not in the local HF cache")


def test_preset_revisions_missing_offline_are_marked_and_refused_up_front(offline_cache, corpus, tmp_path, capsys):
    assert main(["trajectory", "list", "preset:pythia-14m?steps=1000,2000,3000"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("main")}
    assert "(not cached)" in rows["3000"] and "(not cached)" not in rows["1000"] + rows["2000"]
    assert "not cached: 1 of 3 revisions" in out
    cfg_path = tmp_path / "sweep.json"
    cfg_path.write_text(json.dumps(_sweep_cfg(tmp_path, corpus, trajectory="preset:pythia-14m?steps=1000,2000,3000")))
    line = run_fail(capsys, ["sweep", cfg_path], "1 of 3", "EleutherAI/pythia-14m@step3000", "HF_HUB_OFFLINE")
    assert "step2000" not in line
    assert not (tmp_path / "res").exists()  # nothing started: no record of the cached revisions either


def test_old_stored_preset_trajectory_reads_back(tmp_path):
    """Stores written before presets had a provenance field hold the preset facts under 'data'."""
    from qrobust.trajectory import Trajectory
    old = {"format": "qrobust.trajectory/1", "name": "pythia-14m", "runs": {},
           "data": {"preset": "pythia", "uncertain": ["x"]}, "checkpoints": []}
    t = Trajectory.from_dict(old, tmp_path)
    assert t.data is None and t.preset == "pythia" and t.provenance["uncertain"] == ["x"]
