"""`qrobust reproduce scaling`: tokens per parameter vs LR decay. The two forms recover known parameters on
synthetic data and the comparison picks the form the data were drawn from; AIC/BIC and the held-out error
match hand-computed values; records become points as constructed (N, D/N, decay depth, bootstrap
replicates); the experiment file resolves as intended (``--model`` swaps only the largest size); a bad
experiment is refused in one line; and a micro-scale run goes end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qrobust.errors import ConfigError
from qrobust.stats import dq_samples, indices
from qrobust.workflows.reproduction import scaling, verdicts
from qrobust.workflows.reproduction.scaling_fits import Points, fit, held_out, information, score
from qrobust.workflows.reproduction.scaling_points import decay_depth, points, quantized_weights, replicates, size_rows
from qrobust.workflows.reproduction.spec import load_spec, resolve_runs


# -- the forms on synthetic data -------------------------------------------------------------------------------
def _synthetic(delta: float, eta: float = 0.0, sizes=(1e5,), noise=2e-4, seed=0) -> Points:
    """Per size: a constant run at 12 D/N values and 3 cooldowns of 4 points each, ΔQ L =
    0.01·(D/N)^0.4·(N/1e6)^eta·(1 + delta·depth) + noise."""
    rng = np.random.default_rng(seed)
    x, n, d, g = [], [], [], []
    for si, size in enumerate(sizes):
        xs = np.geomspace(0.5, 200, 12)
        x += list(xs); n += [size] * 12; d += [0.0] * 12; g += [-1] * 12
        for b, start in enumerate((2.0, 10.0, 50.0)):
            x += list(start * np.array([1.1, 1.2, 1.3, 1.4])); n += [size] * 4
            d += [0.25, 0.5, 0.75, 1.0]; g += [3 * si + b] * 4
    x, n, d = np.array(x), np.array(n), np.array(d)
    y = 0.01 * x ** 0.4 * (n / 1e6) ** eta * (1 + delta * d) + rng.normal(0, noise, x.size)
    return Points(x, n, d, y, np.ones_like(y), np.array(g))


def test_tokens_form_recovers_a_power_law_and_wins_when_decay_does_nothing():
    p = _synthetic(delta=0.0)
    t, s = score("tokens", False, p), score("schedule", False, p)
    assert t["gamma"] == pytest.approx(0.4, abs=0.02) and math.exp(t["log_k"]) == pytest.approx(0.01 * 0.1 ** 0.0,
                                                                                                rel=0.05)
    assert abs(s["delta"]) < 0.05  # no step found where there is none
    assert t["bic"] < s["bic"]  # the extra parameter does not pay for itself
    assert t["held_out"] <= s["held_out"] * 1.1


def test_schedule_form_recovers_the_step_and_wins_when_decay_raises_dq():
    p = _synthetic(delta=0.6)
    t, s = score("tokens", False, p), score("schedule", False, p)
    assert s["delta"] == pytest.approx(0.6, abs=0.05) and s["gamma"] == pytest.approx(0.4, abs=0.02)
    assert s["aic"] < t["aic"] - 10 and s["bic"] < t["bic"] - 10
    assert s["held_out"] < 0.5 * t["held_out"]


def test_pooled_forms_recover_the_size_exponent():
    p = _synthetic(delta=0.5, eta=-0.3, sizes=(3e4, 3e5, 3e6), noise=1e-4)
    s = score("schedule", True, p)
    assert (s["gamma"], s["eta"], s["delta"]) == pytest.approx((0.4, -0.3, 0.5), abs=0.03)
    assert s["params"] == 4 and score("tokens", True, p)["params"] == 3


def test_information_criteria_and_held_out_error_by_hand():
    info = information(2.0, 10, 3)
    assert info["aic"] == pytest.approx(10 * math.log(0.2) + 6)
    assert info["bic"] == pytest.approx(10 * math.log(0.2) + 3 * math.log(10))
    # exact data: y = 0.02·x^0.5 on the constant run; cooldowns multiply it by (1 + 0.5·depth). The tokens
    # form, fitted without a held-out cooldown, is the exact baseline (the other cooldown pulls it only if it
    # is in the fit: keep one cooldown per fold by having exactly the points below)
    x = np.array([1.0, 2, 4, 8, 16, 32, 3, 3, 20, 20])
    d = np.array([0, 0, 0, 0, 0, 0, 0.5, 1.0, 0.5, 1.0])
    g = np.array([-1] * 6 + [0, 0, 1, 1])
    y = 0.02 * x ** 0.5 * (1 + 0.5 * d)
    p = Points(x, np.ones_like(x), d, y, np.ones_like(x), g)
    # schedule form: each fold still sees the other cooldown, so it recovers δ exactly: error 0
    assert held_out("schedule", False, p) == pytest.approx(0.0, abs=1e-6)
    # tokens form: each fold fits baseline + one cooldown; a slow reference refit with scipy's curve_fit
    from scipy.optimize import curve_fit
    errs = []
    for grp in (0, 1):
        tr = g != grp
        (k, gam), _ = curve_fit(lambda xx, k, gam: k * xx ** gam, x[tr], y[tr], p0=(0.02, 0.5), maxfev=20000)
        errs += list(k * x[~tr] ** gam - y[~tr])
    assert held_out("tokens", False, p) == pytest.approx(math.sqrt(np.mean(np.square(errs))), rel=1e-4)
    theta = fit("tokens", False, p.take(g == -1))
    assert (math.exp(theta[0]), theta[1]) == pytest.approx((0.02, 0.5), rel=1e-6)


def test_delta_is_never_learned_from_the_held_out_run():
    # one cooldown only: holding it out leaves no decay to learn δ from, so δ = 0 and both forms agree
    x = np.array([1.0, 2, 4, 8, 16, 5, 5])
    d = np.array([0, 0, 0, 0, 0, 0.5, 1.0])
    p = Points(x, np.ones_like(x), d, 0.01 * x ** 0.3 * (1 + d), np.ones_like(x), np.array([-1] * 5 + [0, 0]))
    start = fit("schedule", False, p)
    assert start[-1] == pytest.approx(1.0, abs=1e-4)
    assert held_out("schedule", False, p, start) == pytest.approx(held_out("tokens", False, p), rel=1e-6)


# -- records -> points ----------------------------------------------------------------------------------------
N_BLOCKS, TOKENS = 24, 10
LAYERS = {"a": {"numel": 3000}, "b": {"numel": 1000}}  # N = 4000


def _rec(run, step, dq, lr, phase, label="rtn-w3g32", layers=None, parent_step=None):
    rng = np.random.default_rng(7 * step + sum(map(ord, run + label)))
    fp = (1 + rng.normal(0, 0.05, N_BLOCKS)) * 40.0
    q = fp * (1 + rng.normal(0, 0.003, N_BLOCKS))
    q *= (1 + dq) * fp.sum() / q.sum()
    return {"trajectory": "t", "checkpoint": {"run": run, "step": step, "tokens": step * 1000, "lr": lr,
                                              "phase": phase, "parent_step": parent_step},
            "variant": {"label": label, "method": "rtn"}, "eval_set": {"id": "e"}, "layers": layers or LAYERS,
            "blocks": {"nll_fp": fp.tolist(), "nll_q": q.tolist()},
            "metrics": {"loss_fp": 4.0, "loss_q": 4.0 * (1 + dq), "dq_rel": float(q.sum() / fp.sum() - 1)}}


META = {"main": {"parent": None, "schedule": {"peak_lr": 0.004}},
        "decay4": {"parent": "main", "from_step": 4}, "decay8": {"parent": "main", "from_step": 8},
        "main-lawa2": {"parent": "main", "averaged": {"averager": "lawa"}}}


def _size(scale_dq: float, decay_gain: float, layers=None):
    """Constant run at steps 0 (left out: no tokens), 2..12; cooldowns from 4 and 8 over 4 steps."""
    recs = [_rec("main", s, scale_dq * s ** 0.5, 0.004, "stable", layers=layers) for s in range(0, 13, 2)]
    for start in (4, 8):
        for k, s in enumerate((start + 2, start + 4)):
            depth = 0.5 * (k + 1)
            recs.append(_rec(f"decay{start}", s, scale_dq * s ** 0.5 * (1 + decay_gain * depth), 0.004 * (1 - depth),
                             "decay", layers=layers, parent_step=start))
    return recs + [_rec("main-lawa2", 12, 0.0, 0.004, "stable", layers=layers)]


def test_records_become_points():
    from qrobust.results.records import variant_records
    recs = variant_records(_size(0.002, 1.0))
    rows = size_rows("s", recs, META)
    assert len(rows) == 6 + 4  # step 0 and the averaged run left out
    assert {r["n"] for r in rows} == {4000} and rows[-1]["x"] == pytest.approx(12 * 1000 / 4000)
    dec = [r for r in rows if r["run"] == "decay4"]
    assert [r["depth"] for r in dec] == pytest.approx([0.5, 1.0]) and all(r["decayed"] for r in dec)
    assert decay_depth(recs[1], 0.004) == 0.0  # stable phase
    # weights: two sizes with mean |ΔQ L| a and 3a -> weights (2a/a)², (2a/3a)²
    rows2 = rows + size_rows("t", variant_records(_size(0.006, 1.0)), META)
    p = points(rows2)
    m1 = np.mean([abs(r["dq"]) for r in rows]); m2 = np.mean([abs(r["dq"]) for r in rows2[10:]])
    overall = np.mean([abs(r["dq"]) for r in rows2])
    assert p.w[0] == pytest.approx((overall / m1) ** 2) and p.w[-1] == pytest.approx((overall / m2) ** 2)
    assert sorted(set(p.group)) == [-1, 0, 1, 2, 3]
    # bootstrap replicates: the stats module's paired ΔQ L with the shared indices, record by record
    ys = replicates(rows, 50)
    idx = indices(N_BLOCKS, 50, 0)
    r0 = rows[3]["record"]
    assert ys[:, 3] == pytest.approx(dq_samples(np.array(r0.blocks.nll_fp), np.array(r0.blocks.nll_q), idx))


def test_verdict_on_constructed_sizes_prefers_the_decay_term(tmp_path):
    recs_a = _size(0.002, 1.0)
    recs_b = _size(0.004, 1.0, layers={"a": {"numel": 16000}})
    claims = scaling.scaling_claims({"small": (recs_a, META), "big": (recs_b, META)}, n_boot=40)
    keys = [c["key"] for c in claims]
    assert keys.count("cooldown_equal_dn") == 2 and keys[-2:] == ["fit_per_size", "fit_pooled"]
    pooled = claims[-1]["comparisons"][0]
    assert pooled["fits"]["schedule"]["delta"] == pytest.approx(1.0, abs=0.15)
    assert pooled["diff"] > 0 and claims[-1]["status"] == "reproduces"
    # the equal-D/N claims are the cooldown kind's comparisons: +ΔQ L gain at each cooldown end
    eq = claims[0]
    assert eq["cell"] == "rtn-w3g32 @ small" and eq["status"] == "reproduces"
    assert [round(100 * k["diff"], 2) for k in eq["comparisons"]] == [
        round(100 * 0.002 * s ** 0.5, 2) for s in (8, 12)]
    table = scaling.scaling_table(None, claims)
    assert [r[1] for r in table["rows"]] == ["big", "small", "pooled"] and table["rows"][-1][-2] == "schedule"
    from qrobust.workflows.reproduction.scaling_figures import scaling_figures
    (fig,) = scaling_figures(load_spec("scaling")[0], {"small": (recs_a, META), "big": (recs_b, META)}, {},
                             tmp_path, claims)
    assert fig.png[:8] == b"\x89PNG\r\n\x1a\n" and fig.path == tmp_path / "scaling_rtn-w3g32.png"
    from qrobust.results.records import variant_records
    rows = size_rows("small", variant_records(recs_a), META) + size_rows("big", variant_records(recs_b), META)
    res = scaling.gap_result(rows, None, 30)
    # a size whose cooldowns were not swept yet has nothing to hold out: no comparison, not a nan one
    no_cool = [r for r in recs_b if r["checkpoint"]["run"] == "main"]
    part = scaling.scaling_claims({"small": (recs_a, META), "big": (no_cool, META)}, n_boot=5)
    assert [k["scope"] for k in part[-2]["comparisons"]] == ["small"]
    assert res["samples"].shape == (30,) and 0 < res["low"] < res["high"] and res["diff"] == pytest.approx(pooled["diff"])


# -- the experiment file ------------------------------------------------------------------------------------
def test_scaling_experiment_resolves(tmp_path):
    spec, text = load_spec("scaling")
    assert spec.verdict == "scaling" and "group_sizes: [32]" in text
    runs = resolve_runs(spec, tmp_path)
    assert [(lbl, r.model.preset, r.steps) for lbl, r in runs.items()] == [
        ("micro", "micro", 4000), ("tiny", "tiny", 2000), ("small", "small", 1600)]
    assert runs["small"].data.max_chars == 12_000_000
    grown = resolve_runs(spec, tmp_path, model="pythia-31m")  # --model: the largest size only
    assert [r.model.preset for r in grown.values()] == ["micro", "tiny", "pythia-31m"]
    tenth = resolve_runs(spec, tmp_path, scale=0.1)["micro"]
    assert (tenth.steps, tenth.checkpoint_every) == (400, 20)
    assert [(b.from_step, b.decay_steps) for b in tenth.branches] == [(80, 80), (200, 80), (320, 80)]
    from qrobust.workflows.reproduction.run import expand
    assert "scaling" not in expand(["all"]) and expand(["all", "scaling"])[-1] == "scaling"  # named, not in 'all'


def test_bad_scaling_experiments_are_one_line_errors():
    one = {"runs": {"tiny": {"model": {"preset": "micro"}}, "small": {"model": {"preset": "micro"}}}}
    with pytest.raises(ConfigError, match=r"at least 2 different 'model: \{preset: ...\}' \(it has 1\)"):
        load_spec("scaling", one)
    with pytest.raises(ConfigError, match="run 'tiny' has no decay"):
        load_spec("scaling", {"runs": {"tiny": {"branches": []}}})
    with pytest.raises(ConfigError, match="'model_runs' names 'huge', which is not one of its runs"):
        load_spec("scaling", {"model_runs": ["huge"]})
    assert verdicts.get_verdict("scaling").table is scaling.scaling_table


# -- end to end (three micro-width models, a few dozen steps) ------------------------------------------------
def _tiny_sizes() -> dict:
    def run(width: int | None) -> dict:
        model = {"preset": "micro", "overrides": {"hidden_size": width, "intermediate_size": 4 * width} if width else {}}
        return {"model": model, "steps": 24, "checkpoint_every": 6,
                "branches": [{"from_step": 6, "decay_steps": 12}, {"from_step": 12, "decay_steps": 12}]}
    return {"base": {"batch_size": 8, "data": {"max_chars": 300_000, "seq_len": 64, "vocab_size": 512},
                     "schedule": {"warmup_steps": 3}},
            "runs": {"micro": run(None), "tiny": run(48), "small": run(64)},
            "sweep": {"methods": ["rtn"], "bits": [3], "group_sizes": [16], "eval": {"n_blocks": 12}}}


@pytest.mark.slow
def test_scaling_experiment_end_to_end(tmp_path, monkeypatch):
    import qrobust
    from qrobust.results.records import variant_records
    from qrobust.results.store import Store
    monkeypatch.setattr(scaling, "N_BOOT_FITS", 20)
    before = torch.get_num_threads()
    try:
        (r,) = qrobust.reproduce("scaling", out=tmp_path, overrides=_tiny_sizes(), progress=False, threads=1)
    finally:
        torch.set_num_threads(before)
    rows = r["table"]["rows"]
    # per size: the constant run's checkpoints 6, 12, 18, 24 and two per cooldown (6 + 12, 12 + 12)
    assert [row[:3] for row in rows] == [["rtn-w3g16", s, 4 + 2 * 2] for s in ("micro", "small", "tiny")] + [
        ["rtn-w3g16", "pooled", 24]]
    # N of the micro model by hand: 2 layers × (32·96 + 32·32 + 32·128 + 128·32) quantized weights
    store = Store(r["runs"]["micro"]["sweep_config"]["out"], create=False)
    recs = [x for x in variant_records(store.records()) if x.trajectory == "micro"]
    assert quantized_weights(recs[0]) == 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)
    assert {c["status"] for c in r["claims"]} <= {"reproduces", "partly", "not reproduced"}
    page = (tmp_path / "scaling" / "index.html").read_text()
    assert 'id="summary-table"' in page and "scaling_rtn-w3g16" in page
    assert (tmp_path / "scaling" / "table.md").read_text().count("\n") == 2 + 4
