"""Verdicts over several training seeds: the pooled interval's arithmetic (closed form) and its coverage on
synthetic experiments with known seed and block variance, the rules with per-seed directions, pooling of
real verdict claims, and seeds reused on a re-run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from qrobust.stats import indices, pool_seeds
from qrobust.workflows.reproduction import verdicts
from qrobust.workflows.reproduction.claims import judge
from qrobust.workflows.reproduction.seeds import pool_claims, signs, strip


def test_pool_seeds_closed_form():
    """Replicates that are one shared block pattern plus each seed's point: the shared variance is that
    pattern's variance, the between-seed part var(points)/S, the df Satterthwaite's."""
    base = np.random.default_rng(1).normal(0, 0.2, 500)
    points = np.array([1.0, 2.0, 3.0])
    out = pool_seeds(points, [base + p for p in points], n_blocks=40)
    v = base.var(ddof=1)
    between = 1.0 / 3  # var([1, 2, 3], ddof=1) = 1, over 3 seeds
    assert out["diff"] == pytest.approx(2.0)
    assert out["var_between"] == pytest.approx(between) and out["var_shared"] == pytest.approx(v)
    df = (between + v) ** 2 / (between ** 2 / 2 + v ** 2 / 39)
    assert out["df"] == pytest.approx(df)
    half = student_t.ppf(0.975, df) * np.sqrt(between + v)
    assert (out["low"], out["high"]) == pytest.approx((2 - half, 2 + half))
    # independent replicates (no shared block noise): the shared part is ~0, never negative
    rng = np.random.default_rng(2)
    alone = pool_seeds(points, [rng.normal(p, 0.2, 500) for p in points], n_blocks=40)
    assert 0 <= alone["var_shared"] < 0.01
    with pytest.raises(ValueError):
        pool_seeds([1.0], [base], n_blocks=40)


def _experiment(rng, sd_seed, sd_shared, sd_own, n_seeds=3, n_blocks=48, n_boot=300):
    """One synthetic experiment with true difference 0: per seed and block, x = seed effect + shared block
    effect (the same held-out text for every seed) + own noise. Returns the pooled result and, for contrast,
    seed 0's own block-bootstrap interval."""
    x = (rng.normal(0, sd_seed, n_seeds)[:, None] + rng.normal(0, sd_shared, n_blocks)[None, :]
         + rng.normal(0, sd_own, (n_seeds, n_blocks)))
    idx = indices(n_blocks, n_boot, 0)  # the same block draw for every seed, as the verdicts use
    boot = x[:, idx].mean(axis=2)
    pooled = pool_seeds(x.mean(axis=1), list(boot), n_blocks)
    naive = np.quantile(boot[0], [0.025, 0.975])
    return pooled, naive


@pytest.mark.parametrize("sd_seed,sd_shared,sd_own", [(1.0, 0.0, 0.05),   # training noise dominates
                                                       (0.0, 1.0, 0.2),    # shared evaluation noise dominates
                                                       (0.1, 0.5, 0.5)])   # all three comparable
def test_pooled_interval_covers_at_its_nominal_rate(sd_seed, sd_shared, sd_own):
    rng = np.random.default_rng(7)
    n = 400
    hits = naive_hits = 0
    for _ in range(n):
        pooled, naive = _experiment(rng, sd_seed, sd_shared, sd_own)
        hits += pooled["low"] <= 0 <= pooled["high"]
        naive_hits += naive[0] <= 0 <= naive[1]
    assert 0.92 <= hits / n <= 0.98, hits / n  # nominal 0.95; 400 experiments: ±0.022 at two s.e.
    if sd_seed >= 1:  # one seed's evaluation-only interval knows nothing of training noise
        assert naive_hits / n < 0.5


def _comp(diff, low, high, seed_diffs=()):
    return {"diff": diff, "low": low, "high": high, "for": low > 0, "against": high < 0,
            "seeds": [{"seed": i, "diff": d} for i, d in enumerate(seed_diffs)]}


def test_rules_need_every_seed_in_the_expected_direction():
    up = _comp(1, .5, 2, (0.8, 1.0, 1.2))
    split = _comp(1, .2, 2, (1.5, 1.6, -0.1))  # pooled up and resolved, one seed the other way
    assert judge("greater", [up, up]) == "reproduces"
    assert judge("greater", [up, split]) == "partly"
    assert judge("greater", [_comp(1, -.5, 2, (1, 1, 1)), _comp(1, -.1, 2, (1, 1, 1))]) == "not reproduced"
    assert signs(split) == "++−"


N_BLOCKS, TOKENS = 24, 10


def _rec(run, step, loss_fp, dq, rng, parent_step=None):
    fp = 1 + rng.normal(0, 0.05, N_BLOCKS)
    fp *= loss_fp * TOKENS * N_BLOCKS / fp.sum()
    q = fp * (1 + dq + rng.normal(0, 0.002, N_BLOCKS))
    n = N_BLOCKS * TOKENS
    return {"trajectory": "t", "checkpoint": {"run": run, "step": step, "tokens": step, "parent_step": parent_step},
            "variant": {"label": "gptq-w3g128", "method": "gptq", "bits": 3}, "eval_set": {"id": "e"},
            "blocks": {"nll_fp": fp.tolist(), "nll_q": q.tolist()},
            "metrics": {"loss_fp": fp.sum() / n, "loss_q": q.sum() / n, "dq_rel": q.sum() / fp.sum() - 1}}


def _cooldown_stores(seed, jump):
    rng = np.random.default_rng(seed)
    recs = [_rec("main", s, 5.0 - 0.2 * s, 0.01, rng) for s in range(1, 7)]
    recs += [_rec("decay2", 4, 3.9, 0.01 + jump, rng, 2), _rec("decay4", 6, 3.5, 0.01 + jump, rng, 4)]
    meta = {"main": {"parent": None}, "decay2": {"parent": "main", "from_step": 2},
            "decay4": {"parent": "main", "from_step": 4}}
    return {"run": (recs, meta)}


def test_pool_claims_of_a_real_verdict_kind():
    kind = verdicts.get_verdict("cooldown")
    jumps = [0.02, 0.03, -0.001]  # two seeds jump up, one does not
    per_seed = kind.claims_per_seed(None, [_cooldown_stores(s, j) for s, j in enumerate(jumps)])
    (pooled,) = pool_claims([0, 1, 2], per_seed)
    assert pooled["n"] == 2 and pooled["seed_status"] == {"0": per_seed[0][0]["status"], "1": per_seed[1][0]["status"],
                                                          "2": per_seed[2][0]["status"]}
    for i, c in enumerate(pooled["comparisons"]):
        mine = [ps[0]["comparisons"][i] for ps in per_seed]
        assert c["diff"] == pytest.approx(np.mean([m["diff"] for m in mine]))
        assert [s["diff"] for s in c["seeds"]] == [m["diff"] for m in mine]
        expect = pool_seeds([m["diff"] for m in mine], [m["_boot"][0] for m in mine], N_BLOCKS)
        assert (c["low"], c["high"]) == pytest.approx((expect["low"], expect["high"]))
        assert "_boot" not in c and signs(c) == "++−"
    assert pooled["status"] != "reproduces"  # seed 2 points the other way
    json.dumps(pooled)  # nothing but plain numbers left
    single = pool_claims([0], per_seed[:1])
    assert single == strip(per_seed[0]) and "seeds" not in single[0]["comparisons"][0]


def _lr_run(rng, scale, offset):
    """A run whose FP loss falls from 5 to 3 (shifted by ``offset``) and whose ΔQ L is ``scale`` × a ramp."""
    return [_rec("main", s, 5.0 - 0.2 * s + offset, scale * 0.002 * s, rng) for s in range(1, 11)]


def test_equal_fp_loss_compares_every_seed_at_the_same_levels():
    stores = []
    for seed, offset in enumerate([0.0, 0.1, -0.05]):
        rng = np.random.default_rng(seed)
        stores.append({"lo": (_lr_run(rng, 3.0, offset), {}), "hi": (_lr_run(rng, 1.0, offset), {})})
    spec = type("S", (), {"order": ["lo", "hi"], "runs": {"lo": {}, "hi": {}}, "levels": 3})()
    per_seed = verdicts.get_verdict("equal_fp_loss").claims_per_seed(spec, stores)
    whats = [[c["what"] for c in ps[0]["comparisons"]] for ps in per_seed]
    assert whats[0] == whats[1] == whats[2] and len(whats[0]) == 3
    # the common overlap: every seed's range of FP loss [3 + offset, 4.8 + offset] -> [3.1, 4.75]
    levels = [c["level"] for c in per_seed[0][0]["comparisons"]]
    lo, hi = 3.1, 4.75
    top = lo + (hi - lo) / 2
    assert levels == pytest.approx([lo + (top - lo) * (k + 0.5) / 3 for k in range(3)])
    (pooled,) = pool_claims([0, 1, 2], per_seed)
    assert pooled["n"] == 3 and all(len(c["seeds"]) == 3 for c in pooled["comparisons"])


# -- end to end (micro model, a few dozen steps) --------------------------------------------------------------
TINY = {"base": {"steps": 20, "checkpoint_every": 10, "batch_size": 8, "model": {"preset": "micro"},
                 "data": {"max_chars": 300_000, "seq_len": 64, "vocab_size": 512}, "schedule": {"warmup_steps": 5},
                 "branches": [{"from_step": 10, "decay_steps": 10}]},
        "sweep": {"bits": [3], "group_sizes": [32], "eval": {"n_blocks": 12}, "calibration": {"n_samples": 8}}}


def _weights(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.safetensors")}


@pytest.mark.slow
def test_seeds_train_apart_pool_are_reused_and_run_in_workers(tmp_path):
    """One seed, then two with --jobs 2: seed 0 is reused untouched, seed 1 trains (init, data order and
    calibration seeds + 1) in a worker process with 1 thread — and gives the numbers the same work gives here
    with 1 thread; the verdict pools both, the page shows each seed."""
    import torch

    import qrobust
    threads = torch.get_num_threads()
    try:
        (r1,) = qrobust.reproduce("f2", out=tmp_path / "a", overrides=TINY, progress=False)
        (seed0,) = (tmp_path / "a" / "runs").iterdir()
        before = _weights(seed0)
        (r2,) = qrobust.reproduce("f2", out=tmp_path / "a", overrides=TINY, progress=False, seeds=2, jobs=2)
        over1 = {**TINY, "base": {**TINY["base"], "seed": 1}, "sweep": {**TINY["sweep"], "calibration": {"n_samples": 8, "seed": 1}}}
        (alone,) = qrobust.reproduce("f2", out=tmp_path / "b", overrides=over1, progress=False, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert "seeds" not in r1 and "seed_status" not in r1["claims"][0]
    folders = sorted(p.name for p in (tmp_path / "a" / "runs").iterdir())
    assert len(folders) == 2 and folders[1].startswith("constant-cooldowns-seed1-") and r2["seeds"] == [0, 1]
    assert _weights(seed0) == before and before  # finished seed reused, its checkpoints untouched
    logs = json.loads((tmp_path / "a" / "logs" / "jobs.json").read_text())
    assert logs["jobs"] == 2 and len(logs["units"]) == 2 == len(list((tmp_path / "a" / "logs").glob("*.log")))
    cfg1 = r2["runs"]["constant-cooldowns (seed 1)"]
    assert cfg1["train_config"]["seed"] == 1 and cfg1["sweep_config"]["calibration"]["seed"] == 1
    (c2,) = r2["claims"]
    assert set(c2["seed_status"]) == {"0", "1"}
    first = c2["comparisons"][0]
    d0, d1 = (s["diff"] for s in first["seeds"])
    assert d0 == r1["claims"][0]["comparisons"][0]["diff"]  # seed 0 alone is the one-seed verdict
    assert d1 == alone["claims"][0]["comparisons"][0]["diff"] and d1 != d0  # worker == here, 1 thread
    assert first["diff"] == pytest.approx((d0 + d1) / 2)
    page = (tmp_path / "a" / "f2" / "index.html").read_text()
    assert len([f for f in r2["figures"] if "seeds_f2" in f]) == 1
    assert "each seed alone" in page and "Pooled over training seeds 0, 1" in page


def test_summary_table_shows_status_pooled_differences_and_signs(tmp_path):
    from qrobust.workflows.reproduction.summary import summary_markdown, write_summary
    comp = {**_comp(0.0084, 0.0041, 0.0127, (0.009, 0.011, -0.002)), "what": "x"}
    pooled = {"experiment": "f2", "seeds": [0, 1, 2], "claims": [
        {"claim": "ΔQ L rises", "cell": "gptq-w2g128", "status": "partly", "comparisons": [comp, comp]}]}
    single = {"experiment": "f4", "claims": [{"claim": "LAWA | loss", "cell": "gptq-w3g128", "status": "reproduces",
                                              "comparisons": [{"diff": 0.0123, "low": 0.001, "high": 0.02, "unit": "nats"}]}]}
    md = summary_markdown([pooled, single])
    assert "| f2 | ΔQ L rises | gptq-w2g128 | **partly** | +0.84 [+0.41, +1.27]; +0.84 [+0.41, +1.27] | ++− ++− |" in md
    assert "| f4 | LAWA \\| loss | gptq-w3g128 | **reproduces** | +0.012 [+0.001, +0.020] nats | — |" in md
    assert md.startswith("Pooled over training seeds 0, 1, 2")
    (tmp_path / "f2").mkdir()
    (tmp_path / "f2" / "verdict.json").write_text(json.dumps(pooled))
    assert write_summary(tmp_path).read_text() == summary_markdown([pooled])


def test_plan_gives_every_seed_its_own_folder_init_data_order_and_calibration(tmp_path):
    from qrobust.errors import ConfigError
    from qrobust.workflows.reproduction.run import plan
    from qrobust.workflows.reproduction.spec import load_spec
    spec, _ = load_spec("f3", {"seeds": 3})  # seeds from the experiment file
    seeds = plan(spec, tmp_path, 1.0, None, None, None)
    assert len(seeds) == 3
    one = [runs["wsd-lr1e-3"] for runs, _ in seeds]
    assert [c.seed for c in one] == [0, 1, 2] and len({c.out for c in one}) == 3
    assert [c.data.seed for c in one] == [0, 0, 0]  # one split, one held-out text for every seed
    assert Path(one[0].out).name == Path(plan(load_spec("f3")[0], tmp_path, 1.0, None, None, None)[0][0]["wsd-lr1e-3"].out).name
    assert Path(one[2].out).name.startswith("wsd-lr1e-3-seed2-")
    assert [sweeps["wsd-lr1e-3"].calibration.seed for _, sweeps in seeds] == [0, 1, 2]
    assert [sweeps["wsd-lr1e-3"].out for _, sweeps in seeds] == [str(tmp_path / "results" / Path(c.out).name) for c in one]
    assert len(plan(spec, tmp_path, 1.0, None, None, 1)) == 1  # --seeds overrides the file
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        plan(spec, tmp_path, 1.0, None, None, 0)
