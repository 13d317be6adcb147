"""Paired bootstrap of ΔQ L over evaluation blocks: closed forms, nominal coverage on synthetic blocks
with a known true ΔQ L, paired vs unpaired comparisons, and what a sweep stores."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from qrobust.errors import QrobustError
from qrobust.results.compare import compare_dq, record_interval
from qrobust.stats import dq_interval


def _rec(fp, q, eval_id="e"):
    return {"blocks": {"nll_fp": list(fp), "nll_q": list(q)}, "eval_set": {"id": eval_id}, "metrics": {}}


def test_constant_per_block_ratio_has_a_zero_width_interval():
    fp = np.random.default_rng(0).gamma(5.0, 20.0, size=50)
    r = dq_interval(fp, fp * 1.03)
    assert r["dq"] == pytest.approx(0.03) and r["low"] == pytest.approx(0.03) and r["high"] == pytest.approx(0.03)
    assert r["n_blocks"] == 50 and r["n_boot"] == 2000


def test_point_estimate_is_the_ratio_of_summed_losses_and_inside_its_interval():
    rng = np.random.default_rng(1)
    fp = rng.gamma(5.0, 20.0, size=64)
    q = fp * (1.02 + rng.normal(0, 0.05, size=64))
    r = dq_interval(fp, q)
    assert r["dq"] == pytest.approx(q.sum() / fp.sum() - 1)
    assert r["low"] < r["dq"] < r["high"] and r["se"] > 0


def test_intervals_cover_the_true_dq_at_about_the_nominal_rate():
    """Blocks with E[nll_q | nll_fp] = 1.02·nll_fp: the true ΔQ L is 0.02. Over 300 synthetic evaluation sets
    the 95 % intervals must contain it about 95 % of the time (binomial sd 1.3 %)."""
    rng = np.random.default_rng(2)
    hits = 0
    for s in range(300):
        fp = rng.gamma(4.0, 25.0, size=64)
        q = fp * 1.02 + rng.normal(0, 3.0, size=64)
        r = dq_interval(fp, q, n_boot=1000, seed=s)
        hits += r["low"] <= 0.02 <= r["high"]
    assert 0.90 <= hits / 300 <= 0.99, hits / 300


def test_paired_comparison_cancels_shared_block_noise():
    fp = np.random.default_rng(3).gamma(4.0, 25.0, size=40)
    a, b = _rec(fp, fp * 1.02), _rec(fp, fp * 1.01)
    c = compare_dq(a, b)
    assert c["paired"] and c["diff"] == pytest.approx(0.01) and c["greater"] and c["p_greater"] == 0.0
    assert c["low"] == pytest.approx(0.01) and c["high"] == pytest.approx(0.01)
    rng = np.random.default_rng(4)
    qa = fp * (1.02 + rng.normal(0, 0.05, 40))
    qb = fp * (1.01 + rng.normal(0, 0.05, 40))
    paired = compare_dq(_rec(fp, qa), _rec(fp, qb))
    unpaired = compare_dq(_rec(fp, qa, "e1"), _rec(fp, qb, "e2"))
    assert not unpaired["paired"] and (paired["high"] - paired["low"]) <= (unpaired["high"] - unpaired["low"])
    rev = compare_dq(_rec(fp, qb), _rec(fp, qa))
    assert rev["diff"] == pytest.approx(-paired["diff"]) and rev["p_greater"] == pytest.approx(1 - paired["p_greater"],
                                                                                                   abs=0.01)


def test_records_without_blocks_say_so():
    with pytest.raises(QrobustError, match="no per-block losses"):
        record_interval({"metrics": {"dq_rel": 0.1}})
    stored = {"low": 0.0, "high": 1.0}
    assert record_interval({"metrics": {"dq_ci": stored}}) == stored


def test_sweep_stores_the_interval(tiny_run, tmp_path):
    from qrobust.sweeps import sweep
    from qrobust.results.store import Store
    sweep({"trajectory": f"{tiny_run}?run=decay8", "out": str(tmp_path / "r"), "bits": [2], "group_sizes": [16],
           "eval": {"n_blocks": 8}}, progress=False)
    (rec,) = Store(tmp_path / "r").records()
    ci = rec.metrics.dq_ci
    assert asdict(ci) == dq_interval(rec.blocks.nll_fp, rec.blocks.nll_q)
    assert ci.low <= rec.metrics.dq_rel <= ci.high and ci.dq == pytest.approx(rec.metrics.dq_rel)


# -- losses and ΔQ L at equal FP loss (the reproduction verdicts) ------------------------------------------
def _loss_rec(fp, q, tokens_per_block=10, eval_id="e", step=0):
    fp, q = np.asarray(fp, float), np.asarray(q, float)
    n = fp.size * tokens_per_block
    return {"blocks": {"nll_fp": list(fp), "nll_q": list(q)}, "eval_set": {"id": eval_id},
            "checkpoint": {"step": step, "run": "main"},
            "metrics": {"loss_fp": fp.sum() / n, "loss_q": q.sum() / n, "dq_rel": q.sum() / fp.sum() - 1}}


def test_compare_loss_is_the_difference_of_mean_token_losses():
    from qrobust.results.compare import compare_loss
    rng = np.random.default_rng(3)
    fp = rng.gamma(5.0, 20.0, size=40)
    a, b = _loss_rec(fp, fp * 1.10), _loss_rec(fp, fp * 1.04)
    res = compare_loss(a, b)
    assert res["diff"] == pytest.approx(0.06 * fp.sum() / 400)
    assert 0 < res["low"] < res["diff"] < res["high"] and res["greater"] and res["paired"]
    flat = np.full(40, 30.0)  # identical blocks: every resample gives the same difference
    res = compare_loss(_loss_rec(flat, flat * 1.1), _loss_rec(flat, flat * 1.2))
    assert res["diff"] == pytest.approx(-0.3) and res["low"] == pytest.approx(-0.3) and res["high"] == pytest.approx(-0.3)
    assert not res["greater"] and res["p_greater"] == 1.0
    fp_only = compare_loss(a, b, which="fp")
    assert fp_only["diff"] == pytest.approx(0.0) and not fp_only["greater"]


def test_crossing_finds_the_first_bracketing_pair():
    from qrobust.stats import crossing
    assert crossing([6.0, 5.0, 4.0, 3.5], 4.5) == (1, pytest.approx(0.5))
    assert crossing([6.0, 5.0, 4.0], 5.0) == (0, pytest.approx(1.0))
    assert crossing([6.0, 5.0, 4.0], 3.0) is None
    assert crossing([6.0, 4.0, 5.0, 3.0], 4.5) == (0, pytest.approx(0.75))  # first crossing wins


def test_dq_at_equal_fp_loss_is_the_linear_interpolation_between_bracketing_checkpoints():
    from qrobust.results.compare import compare_dq_at_fp_loss
    fp = np.full(20, 50.0)  # 20 blocks of 10 tokens: loss = 5.0 × scale
    # run a: FP loss 5.0, 4.0, 3.0 with ΔQ L 1 %, 2 %, 4 %; run b: FP loss 4.5, 3.5 with ΔQ L 0.5 %, 1 %
    a = [_loss_rec(fp * s, fp * s * (1 + d), step=i) for i, (s, d) in enumerate([(1.0, .01), (.8, .02), (.6, .04)])]
    b = [_loss_rec(fp * s, fp * s * (1 + d), step=i) for i, (s, d) in enumerate([(.9, .005), (.7, .01)])]
    res = compare_dq_at_fp_loss(a, b, 3.75)
    # a at 3.75: between 4.0 (2 %) and 3.0 (4 %), w = 0.25 -> 2.5 %; b: between 4.5 and 3.5, w = 0.75 -> 0.875 %
    assert res["dq_a"] == pytest.approx(0.025) and res["dq_b"] == pytest.approx(0.00875)
    assert res["diff"] == pytest.approx(0.01625) and res["greater"] and res["paired"]
    assert res["at_a"] == {"steps": [1, 2], "weight": pytest.approx(0.25)}
    with pytest.raises(QrobustError, match="outside the run's range"):
        compare_dq_at_fp_loss(a, b, 2.0)
