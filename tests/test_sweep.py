"""Sweeps: work grouped per checkpoint, resumable, never overwriting, numbers equal to a direct computation."""
from __future__ import annotations

import json

import pytest

from qrobust.api import eval_blocks
from qrobust.evaluate import evaluate_loss
from qrobust.models import load_checkpoint
from qrobust.quant import quantize
from qrobust.sweeps import Store, sweep
import qrobust.sweeps.run_group as run_mod


def _cfg(tiny_run, out, **kw):
    return {"trajectory": str(tiny_run), "out": str(out), "bits": [3, 4], "group_sizes": [16],
            "eval": {"n_blocks": 6, "batch_size": 4}, **kw}


def test_one_load_and_one_fp_eval_per_checkpoint(tiny_run, tmp_path):
    s = sweep(_cfg(tiny_run, tmp_path / "res"), progress=False)
    assert s.checkpoints == 4
    assert s.model_loads == 4 and s.fp_evals == 4
    assert s.records_written == 8 and s.records_skipped == 0
    again = sweep(_cfg(tiny_run, tmp_path / "res"), progress=False)
    assert again.model_loads == 0 and again.fp_evals == 0 and again.records_written == 0
    assert again.records_skipped == 8


def test_new_setting_adds_records_and_never_overwrites(tiny_run, tmp_path):
    res = tmp_path / "res"
    sweep(_cfg(tiny_run, res), progress=False)
    before = {p.name: p.read_bytes() for p in (res / "records").glob("*.json")}
    s = sweep(_cfg(tiny_run, res, bits=[3, 4, 8]), progress=False)
    assert s.records_written == 4 and s.records_skipped == 8
    assert s.fp_evals == 0  # FP loss reused from the store
    after = {p.name: p.read_bytes() for p in (res / "records").glob("*.json")}
    assert len(after) == 12
    assert all(after[k] == v for k, v in before.items())
    s2 = sweep(_cfg(tiny_run, res, sym=False), progress=False)
    assert s2.records_written == 8  # asymmetric is a different variant


def test_record_numbers_equal_a_direct_computation(tiny_run, tmp_path):
    sweep(_cfg(tiny_run, tmp_path / "res"), progress=False)
    recs = Store(tmp_path / "res", create=False).records()
    r = next(x for x in recs if x.checkpoint.run == "decay8" and x.variant.bits == 3)
    ck = r.checkpoint.path
    model = load_checkpoint(ck)
    blocks = eval_blocks(ck, n_blocks=6)
    fp = evaluate_loss(model, blocks).loss
    qmodel, _ = quantize(model, method="rtn", bits=3, group_size=16, sym=True)
    q = evaluate_loss(qmodel, blocks).loss
    m = r.metrics
    assert m.loss_fp == pytest.approx(fp, rel=1e-9)
    assert m.loss_q == pytest.approx(q, rel=1e-9)
    assert m.dq_rel == pytest.approx(q / fp - 1, rel=1e-6)
    assert r.eval_set.n_tokens == 6 * 31
    assert r.checkpoint.phase == "decay" and r.checkpoint.tokens == 12 * 4 * 32


def test_crash_mid_sweep_then_resume_equals_uninterrupted(tiny_run, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    sweep(_cfg(tiny_run, clean), progress=False)
    real = run_mod.evaluate_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "evaluate_loss", flaky)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        sweep(_cfg(tiny_run, crashed), progress=False)
    n_before = len(list((crashed / "records").glob("*.json")))
    assert 0 < n_before < 8
    monkeypatch.setattr(run_mod, "evaluate_loss", real)
    s = sweep(_cfg(tiny_run, crashed), progress=False)
    assert s.records_written == 8 - n_before
    a = {r.key: r.metrics for r in Store(clean, create=False).records()}
    b = {r.key: r.metrics for r in Store(crashed, create=False).records()}
    assert a == b


def test_calibrated_variants_with_options_share_one_calibration_set(tiny_run, tmp_path, monkeypatch):
    import qrobust.sweeps.sets as sets_mod
    calls = {"n": 0}
    real = sets_mod.build_calibration

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(sets_mod, "build_calibration", counting)
    cfg = _cfg(tiny_run, tmp_path / "res", bits=[3],
               methods=["rtn", {"name": "gptq", "profile": "reference"}, {"name": "gptq", "profile": "gptqmodel"},
                        {"name": "awq", "n_grid": 10}],
               calibration={"n_samples": 16})
    s = sweep(cfg, progress=False)
    assert s.records_written == 16 and s.fp_evals == 4 and s.model_loads == 4
    assert calls["n"] == 1  # one tokenizer -> one calibration set for all checkpoints and calibrated variants
    recs = Store(tmp_path / "res", create=False).records()
    labels = sorted({r.variant.label for r in recs})
    assert labels == ["awq-w3g16-n_grid=10", "gptq-w3g16-gptqmodel", "gptq-w3g16-reference", "rtn-w3g16"]
    a = next(r for r in recs if r.variant.method == "awq")
    # per-layer details have no typed field: read them from the stored JSON
    assert any("awq_ratio" in v for v in a.to_dict()["layers"].values()) and a.calibration["n_samples"] == 16
    g = next(r for r in recs if r.variant.label == "gptq-w3g16-reference")
    assert g.calibration["n_samples"] == 16 and g.variant.options == {"profile": "reference"}
    assert all("recon_loss" in v and "damp" in v for v in g.to_dict()["layers"].values())
    r = next(x for x in recs if x.variant.method == "rtn")
    assert r.has("calibration") and r.calibration is None


def test_bad_method_options_fail_before_any_work(tiny_run, tmp_path):
    from qrobust.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown GPTQ option"):
        sweep(_cfg(tiny_run, tmp_path / "res", methods=[{"name": "gptq", "dmp": 1}]), progress=False)
    assert not (tmp_path / "res").exists()


def test_default_calibration_length():
    from types import SimpleNamespace

    from qrobust.config import DataConfig
    from qrobust.data.evalset import default_calibration_length
    assert default_calibration_length(DataConfig(seq_len=96), {"max_position_embeddings": 4096}) == 96
    assert default_calibration_length(None, {"max_position_embeddings": 4096}) == 2048
    assert default_calibration_length(None, SimpleNamespace(n_positions=1024)) == 1024
    assert default_calibration_length(None, {}) == 2048


def test_report_provenance_shows_training_and_sweep_configs_with_seeds(tiny_run, tmp_path):
    """The stored trajectory carries the training config; every distinct sweep config is kept once."""
    from qrobust.reporting import write_report
    from qrobust.results.store import Store
    cfg = {"trajectory": f"{tiny_run}?run=decay8", "out": str(tmp_path / "r"), "bits": [2], "group_sizes": [16],
           "eval": {"n_blocks": 4}, "calibration": {"seed": 7}}
    sweep(cfg, progress=False)
    sweep(cfg, progress=False)
    sweep({**cfg, "bits": [3]}, progress=False)
    store = Store(tmp_path / "r", create=False)
    assert [c["bits"] for c in store.configs()] == [[2], [3]]
    (traj,) = store.trajectories().values()
    assert traj["config"]["seed"] == json.loads((tiny_run / "train_config.json").read_text())["seed"]
    page = write_report(tmp_path / "r").read_text()
    assert "Training config (seed 0, data split seed 0)" in page and "calibration seed 7" in page
    assert page.count("<h3>Sweep configs</h3>") == 1 and "2000 resamples" in page


def test_streamed_sweep_writes_the_in_memory_records(tiny_run, tmp_path):
    from qrobust.errors import ConfigError, QrobustError
    methods = ["rtn", {"name": "gptq"}, {"name": "awq"}]
    cfg = _cfg(tiny_run, tmp_path / "mem", bits=[3], methods=methods, trajectory=f"{tiny_run}?run=decay8",
               calibration={"n_samples": 4})
    sweep(cfg, progress=False)
    s = sweep({**cfg, "out": str(tmp_path / "str"), "stream": True, "states": "disk",
               "states_dir": str(tmp_path / "states")}, progress=False)
    assert (s.records_written, s.fp_evals, s.model_loads) == (3, 1, 1)  # one pass: FP and three variants
    mem = {p.name: json.loads(p.read_text()) for p in (tmp_path / "mem" / "records").glob("*.json")}
    got = {p.name: json.loads(p.read_text()) for p in (tmp_path / "str" / "records").glob("*.json")}
    assert mem.keys() == got.keys() and len(got) == 3  # same keys: streaming is not part of them
    for k, r in got.items():
        assert r["streamed"]["states"] == "disk" and "streamed" not in mem[k]
        for part in ("metrics", "blocks", "calibration", "weight_error", "variant"):
            assert r[part] == mem[k][part], (r["variant"]["label"], part)
        rel = {n: v["rel_err"] for n, v in mem[k]["layers"].items()}
        assert {n: v["rel_err"] for n, v in r["layers"].items()} == rel
    assert not any((tmp_path / "states").iterdir())
    # a streamed pass over a store with the FP loss reuses it; nothing left for the in-memory path after
    more = sweep({**cfg, "out": str(tmp_path / "mem"), "bits": [2, 3], "stream": True}, progress=False)
    assert (more.records_written, more.fp_evals, more.records_skipped) == (3, 0, 3)
    assert sweep({**cfg, "out": str(tmp_path / "mem"), "bits": [2, 3]}, progress=False).model_loads == 0
    with pytest.raises(ConfigError, match="loss geometry and downstream tasks need the whole model"):
        sweep({**cfg, "out": str(tmp_path / "x"), "stream": True, "geometry": {}}, progress=False)
    with pytest.raises(QrobustError, match="block-sequential"):
        sweep({**cfg, "out": str(tmp_path / "x"), "stream": True,
               "methods": [{"name": "gptq", "sequential": False}]}, progress=False)
    assert not (tmp_path / "x").exists()
