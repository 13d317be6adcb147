"""`qrobust predictors`: rank agreement of predictors with measured GPTQ ΔQ L (statistics against scipy and hand
values, bootstrap determinism), the end-to-end validation on a tiny GPTQ store with test predictors (one that
equals the truth, one with a known value, one that counts its calls), the cache, the report section and the
CLI's one-line refusals."""
from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, spearmanr

from qrobust.monitor.predictors import PREDICTORS, register_predictor
from qrobust.workflows.predictor_stats import (agreement, cost_ratio, kendall_rows, resample_indices,
                                               spearman_rows)

# ---------------------------------------------------------------------------------------------- statistics


def test_agreement_hand_values():
    # one swapped pair out of 4: Σd² = 2 -> ρ = 1 - 6·2/(4·15) = 0.8; 5 concordant, 1 discordant -> τ = 4/6
    a = agreement([1, 2, 3, 4], [1, 3, 2, 4], n_boot=0)
    assert a.rho == pytest.approx(0.8) and a.tau == pytest.approx(2 / 3)
    assert a.n == 4 and a.rho_ci is None
    rev = agreement([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], n_boot=0)
    assert rev.rho == pytest.approx(-1.0) and rev.tau == pytest.approx(-1.0)


def test_agreement_equals_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 17).astype(float)  # many ties
    y = x + rng.normal(0, 2, 17)
    a = agreement(x, y, n_boot=0)
    assert a.rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert a.tau == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)


def test_vectorized_resamples_equal_a_scipy_loop():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=9), 1)
    x[3] = x[5]  # a tie
    y = x ** 2 + rng.normal(0, 0.3, 9)
    idx = resample_indices(9, 50, seed=1)
    rho, tau = spearman_rows(x[idx], y[idx]), kendall_rows(x[idx], y[idx])
    for i, row in enumerate(idx):
        ref_r, ref_t = spearmanr(x[row], y[row]).statistic, kendalltau(x[row], y[row]).statistic
        if np.isnan(ref_r):
            assert np.isnan(rho[i])
        else:
            assert rho[i] == pytest.approx(ref_r, abs=1e-12) and tau[i] == pytest.approx(ref_t, abs=1e-12)


def test_constant_resample_has_no_coefficient():
    x, y = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert np.isnan(spearman_rows(x, y)[0]) and spearman_rows(x, y)[1] == pytest.approx(-1)
    assert np.isnan(kendall_rows(x, y)[0]) and kendall_rows(x, y)[1] == pytest.approx(-1)
    assert agreement([1, 1, 1, 1], [1, 2, 3, 4]).rho is None


def test_bootstrap_interval_deterministic_and_contains_point():
    rng = np.random.default_rng(7)
    x = rng.normal(size=12)
    y = x + rng.normal(0, 0.7, 12)
    a, b = agreement(x, y, n_boot=2000, seed=0), agreement(x, y, n_boot=2000, seed=0)
    assert a == b and a.rho_ci is not None and a.tau_ci is not None
    assert a.rho_ci[0] <= a.rho <= a.rho_ci[1] and a.tau_ci[0] <= a.tau <= a.tau_ci[1]
    assert agreement(x, y, n_boot=2000, seed=1).rho_ci != a.rho_ci  # the seed is what fixes it
    # the interval is the 2.5/97.5 percentiles of ρ over the seeded resamples (scipy per resample)
    idx = resample_indices(12, 2000, 0)
    ref = [spearmanr(x[i], y[i]).statistic for i in idx]
    assert a.rho_ci == pytest.approx(tuple(np.quantile([r for r in ref if np.isfinite(r)], [0.025, 0.975])))
    assert agreement(x[:3], y[:3], n_boot=2000).rho_ci is None  # fewer than 4 checkpoints: no interval


def test_cost_ratio_is_the_median():
    assert cost_ratio([10, 20, 30], [1, 4, 1]) == pytest.approx(10.0)
    assert cost_ratio([10, None, 5], [0, 1, 0.5]) == pytest.approx(10.0)  # missing / zero times left out
    assert cost_ratio([], []) is None


# ------------------------------------------------------------------------------------------- end to end

TINY_GPTQ = {"methods": ["gptq"], "bits": [3], "group_sizes": [16], "eval": {"n_blocks": 6, "batch_size": 4},
             "calibration": {"n_samples": 8}}
CALLS: dict[str, int] = {}
TRUTH: dict[float, float] = {}


@torch.no_grad()
def fingerprint(model: torch.nn.Module) -> float:
    return round(float(sum(p.double().sum() for p in model.parameters())), 6)


@torch.no_grad()
def weight_sq(model: torch.nn.Module) -> float:
    return float(sum((p.double() ** 2).sum() for n, p in model.named_parameters() if p.ndim == 2))


@pytest.fixture(scope="module")
def gptq_store(tiny_run, tmp_path_factory) -> Path:
    from qrobust.sweeps import sweep
    out = tmp_path_factory.mktemp("gptq") / "res"
    s = sweep({"trajectory": str(tiny_run), "out": str(out), **TINY_GPTQ}, progress=False)
    assert s.records_written == 4
    return out


@pytest.fixture
def test_predictors(gptq_store):
    """Registered for one test: t_truth (the measured ΔQ L itself), t_sq (Σ w² of the 2-D weights, computed
    anew here), t_calib / t_eval (what they were given), each counting its calls."""
    from qrobust.models import load_checkpoint
    from qrobust.results.store import Store
    TRUTH.clear()
    CALLS.clear()
    for r in Store(gptq_store, create=False).records():
        TRUTH[fingerprint(load_checkpoint(r.checkpoint.path))] = r.metrics.dq_rel

    def counted(name, fn):
        def call(ctx):
            CALLS[name] = CALLS.get(name, 0) + 1
            return fn(ctx)
        call.__doc__ = f"test predictor {name}"
        return call

    made = {"t_truth": ("weights", True, lambda c: TRUTH[fingerprint(c.model)]),
            "t_sq": ("weights", False, lambda c: weight_sq(c.model)),
            "t_calib": ("calibration", False, lambda c: float(c.calibration.double().sum()) + c.calibration.shape[0]),
            "t_eval": ("eval", False, lambda c: float(c.eval_blocks.shape[0]))}
    for name, (cost, per, fn) in made.items():
        register_predictor(name, cost, per)(counted(name, fn))
    yield list(made)
    for name in made:
        PREDICTORS.pop(name, None)


def run(stores, **kw):
    from qrobust import api
    return api.validate_predictors(stores, progress=False, **kw)


def test_truth_predictor_ranks_perfectly(gptq_store, test_predictors, tmp_path):
    s = run(gptq_store, out=tmp_path / "p", predictors=["t_truth", "t_sq"], n_boot=500)
    rows = {r["predictor"]: r for r in s["table"]}
    t = rows["t_truth/rtn-w3g16"]
    assert t["target"] == "gptq-w3g16" and t["n"] == 4 and s["n_checkpoints"] == 4
    assert t["rho"] == pytest.approx(1.0) and t["tau"] == pytest.approx(1.0)
    assert t["rho_ci"] == pytest.approx([1.0, 1.0])  # every resample with two distinct points ranks perfectly
    runs = {(r["predictor"], r["run"]): r for r in s["runs"]}
    main = runs[("t_truth/rtn-w3g16", "t/main")]
    assert main["n"] == 3 and main["rho"] == pytest.approx(1.0) and main["rho_ci"] is None  # < 4: no interval
    branch = [r for (k, run_), r in runs.items() if k == "t_truth/rtn-w3g16" and run_ != "t/main"]
    assert [r["n"] for r in branch] == [1] and branch[0]["rho"] is None  # one checkpoint: no ranking
    assert CALLS == {"t_truth": 4, "t_sq": 4}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_values_correlations_and_costs_match_independent_computation(gptq_store, tiny_run, test_predictors, tmp_path):
    from qrobust.data.checkpoint_blocks import calib_blocks
    from qrobust.models import load_checkpoint
    from qrobust.results.store import Store
    s = run([gptq_store], out=tmp_path / "p", predictors=["t_sq", "t_calib", "t_eval"], n_blocks=5,
            calib_samples=3)
    recs = {r.checkpoint.path: r for r in Store(gptq_store, create=False).records()}
    rows = read_csv(tmp_path / "p" / "values.csv")
    assert len(rows) == 12
    want = {"t_sq": lambda p: weight_sq(load_checkpoint(p)), "t_eval": lambda p: 5.0,
            "t_calib": lambda p: float(calib_blocks(p, n_samples=3).double().sum()) + 3}
    for row in rows:
        path = row["path"]
        assert float(row["value"]) == pytest.approx(want[row["predictor"]](path), rel=1e-9)
        assert float(row["truth"]) == recs[path].metrics.dq_rel
    sq = [r for r in rows if r["predictor"] == "t_sq"]
    table = {r["predictor"]: r for r in s["table"]}
    x, y = [float(r["value"]) for r in sq], [float(r["truth"]) for r in sq]
    assert table["t_sq"]["rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert table["t_sq"]["tau"] == pytest.approx(kendalltau(x, y).statistic)
    ratios = [(recs[r["path"]].timings["quantize_s"] + recs[r["path"]].timings["eval_s"]) / float(r["seconds"])
              for r in sq]
    assert table["t_sq"]["cost_ratio"] == pytest.approx(statistics.median(ratios))
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["table"] == json.loads(json.dumps(s["table"]))
    assert summary["figures"] == ["predictors_gptq-w3g16.png"]
    assert (tmp_path / "p" / "predictors_gptq-w3g16.png").read_bytes()[:4] == b"\x89PNG"
    assert "t_sq" in s["text"] and "cheaper" in s["text"]


def test_cache_makes_a_rerun_compute_nothing(gptq_store, test_predictors, tmp_path):
    out = tmp_path / "p"
    first = run(gptq_store, out=out, predictors=["t_sq"], n_boot=100)
    assert CALLS == {"t_sq": 4} and first["computed"] == 4
    again = run(gptq_store, out=out, predictors=["t_sq"], n_boot=100)
    assert CALLS == {"t_sq": 4} and again["computed"] == 0
    assert again["table"] == first["table"]
    more = run(gptq_store, out=out, predictors=["t_sq", "t_eval"], n_boot=100)  # only the new one runs
    assert CALLS == {"t_sq": 4, "t_eval": 4} and more["computed"] == 4
    run(gptq_store, out=out, predictors=["t_sq"], n_blocks=7, n_boot=100)  # other settings: computed anew
    assert CALLS["t_sq"] == 8


def test_report_shows_the_section(gptq_store, test_predictors, tmp_path):
    from qrobust import api
    store = tmp_path / "res"
    shutil.copytree(gptq_store, store)
    run(store, predictors=["t_truth"], n_boot=100)  # default out: <store>/predictors
    assert (store / "predictors" / "summary.json").is_file()
    page = api.report(store).read_text()
    assert "<h2>Predictors of GPTQ ΔQ L</h2>" in page
    assert 'id="predictors_gptq-w3g16"' in page and "t_truth/rtn-w3g16" in page and "+1.000" in page
    plain = api.report(gptq_store, tmp_path / "r2").read_text()
    assert "Predictors of GPTQ" not in plain


# ------------------------------------------------------------------------------------------------ CLI


def cli(capsys, *argv) -> tuple[int, str, str]:
    from qrobust.cli import main
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_cli_runs_and_prints_the_table(gptq_store, test_predictors, tmp_path, capsys):
    rc, out, _ = cli(capsys, "predictors", str(gptq_store), "--predictors", "t_truth,t_sq", "--out",
                     str(tmp_path / "p"), "--quiet")
    assert rc == 0
    assert "t_truth/rtn-w3g16" in out and "+1.000 [+1.00, +1.00]" in out and "4 checkpoints (4 computed" in out


def test_cli_refusals_are_one_line(gptq_store, tiny_results, test_predictors, tmp_path, capsys):
    rc, _, err = cli(capsys, "predictors", str(tiny_results), "--predictors", "t_sq", "--out", str(tmp_path / "a"))
    assert rc == 2 and err.count("\n") == 1 and "holds no gptq records at 3 bits" in err
    rc, _, err = cli(capsys, "predictors", str(gptq_store), "--predictors", "t_sq,nope", "--out", str(tmp_path / "b"))
    assert rc == 2 and err.count("\n") == 1 and "unknown predictor 'nope'" in err
    rc, _, err = cli(capsys, "predictors", str(tmp_path / "none"), "--predictors", "t_sq")
    assert rc == 2 and err.count("\n") == 1 and "not a qrobust results folder" in err
    assert not CALLS  # refused before any work


def move_checkpoints(store: Path, dst: Path, which: int | None) -> None:
    """Point ``which`` records (all when None) at a checkpoint folder that does not exist."""
    for i, f in enumerate(sorted((store / "records").glob("*.json"))):
        if which is None or i < which:
            d = json.loads(f.read_text())
            d["checkpoint"]["path"] = str(dst / f"gone{i}")
            f.write_text(json.dumps(d))


def test_cli_skips_gone_checkpoints_and_refuses_when_none_left(gptq_store, test_predictors, tmp_path, capsys):
    store = tmp_path / "res"
    shutil.copytree(gptq_store, store)
    move_checkpoints(store, tmp_path, 1)
    rc, out, err = cli(capsys, "predictors", str(store), "--predictors", "t_sq", "--quiet")
    assert rc == 0 and err.count("\n") == 1 and "skipped 1 checkpoint(s) whose folder is gone" in err
    assert "3 checkpoints" in out and "1 skipped" in out and CALLS == {"t_sq": 3}
    move_checkpoints(store, tmp_path, None)
    rc, _, err = cli(capsys, "predictors", str(store), "--predictors", "t_sq", "--out", str(tmp_path / "b"))
    assert rc == 2 and err.count("\n") == 1 and "no checkpoint folder of the gptq records exists" in err


def test_each_predictor_is_timed_alone(gptq_store, test_predictors, tmp_path):
    """Shared work (ctx.cached) is redone for every predictor, so each one's seconds and cost ratio are what it
    costs when run by itself."""
    done: list[str] = []

    def shared(ctx):
        return ctx.cached("shared", lambda: done.append("x") or 1.0)
    for name in ("t_share_a", "t_share_b"):
        register_predictor(name, "weights", False)(shared)
    try:
        s = run(gptq_store, out=tmp_path / "p", predictors=["t_share_a", "t_share_b"], n_boot=10)
    finally:
        for name in ("t_share_a", "t_share_b"):
            PREDICTORS.pop(name, None)
    assert len(done) == 8 and [r["n"] for r in s["table"]] == [4, 4]  # 2 predictors x 4 checkpoints


def test_cache_recomputes_a_predictor_whose_code_changed(gptq_store, tmp_path, monkeypatch):
    import importlib
    src = tmp_path / "mod" / "t_code_pred.py"
    src.parent.mkdir()
    src.write_text("N = [0]\n\n\ndef f(ctx):\n    N[0] += 1\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(src.parent))
    mod = importlib.import_module("t_code_pred")
    register_predictor("t_code", "weights", False)(mod.f)
    try:
        run(gptq_store, out=tmp_path / "p", predictors=["t_code"], n_boot=10)
        run(gptq_store, out=tmp_path / "p", predictors=["t_code"], n_boot=10)
        assert mod.N[0] == 4  # cached
        src.write_text(src.read_text() + "# changed\n")  # same function, other code: its values are stale
        assert run(gptq_store, out=tmp_path / "p", predictors=["t_code"], n_boot=10)["computed"] == 4
        assert mod.N[0] == 8
    finally:
        PREDICTORS.pop("t_code", None)


def test_noise_ceiling_is_one_without_noise_and_equals_a_scipy_loop():
    import numpy as np
    from scipy.stats import spearmanr
    from qrobust.workflows.predictor_stats import noise_ceiling
    y = [0.1, 0.4, 0.2, 0.9, 0.5]
    assert noise_ceiling(y, [0.0] * 5) == 1.0
    se = [0.05, 0.2, 0.1, 0.3, 0.02]
    draws = np.random.default_rng(3).standard_normal((50, 5)) * np.asarray(se)
    loop = [spearmanr(y, np.asarray(y) + d).statistic for d in draws]
    assert abs(noise_ceiling(y, se, n_sim=50, seed=3) - float(np.median(loop))) < 1e-12
    assert noise_ceiling(y, [1e6] * 5, n_sim=400) < 0.3  # noise swamps the spread: no ranking survives
    assert noise_ceiling([1.0, 1.0], [0.1, 0.1]) is None and noise_ceiling(y, [float("nan")] * 5) is None
