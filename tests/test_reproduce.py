"""`qrobust reproduce`: verdict rules on constructed comparisons, each verdict kind on synthetic records
whose answer is known, experiment files (scaling, shared runs), and small end-to-end runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qrobust.errors import ConfigError, QrobustError
from qrobust.workflows.reproduction import verdicts
from qrobust.workflows.reproduction.spec import builtin_names, load_spec, resolve_runs, scale_train

N_BLOCKS, TOKENS = 32, 10


def _rec(run, step, loss_fp, dq, label="gptq-w3g128", noise=0.002, seed=0, eval_id="e", parent_step=None):
    """A record whose FP loss and ΔQ L are what is asked, with per-block noise around them."""
    rng = np.random.default_rng(seed + 1000 * step + hash(run) % 997)
    fp = 1 + rng.normal(0, 0.05, N_BLOCKS)
    fp *= loss_fp * TOKENS * N_BLOCKS / fp.sum()  # exactly the asked FP loss and ΔQ L, noisy per block
    q = fp * (1 + rng.normal(0, noise, N_BLOCKS))
    q *= (1 + dq) * fp.sum() / q.sum()
    n = N_BLOCKS * TOKENS
    return {"trajectory": "t", "checkpoint": {"run": run, "step": step, "tokens": step * 100, "parent_step": parent_step},
            "variant": {"label": label, "method": "gptq", "bits": 3}, "eval_set": {"id": eval_id},
            "blocks": {"nll_fp": fp.tolist(), "nll_q": q.tolist()},
            "metrics": {"loss_fp": fp.sum() / n, "loss_q": q.sum() / n, "dq_rel": q.sum() / fp.sum() - 1}}


def _comp(diff, low, high):
    return {"diff": diff, "low": low, "high": high, "for": low > 0, "against": high < 0}


def test_judge_rules():
    j = verdicts.judge
    assert j("greater", [_comp(1, .5, 2), _comp(1, -.1, 2)]) == "reproduces"  # all up, half resolved
    assert j("greater", [_comp(1, .5, 2), _comp(1, -.1, 2), _comp(1, -.1, 2)]) == "partly"  # 1 of 3 resolved
    assert j("greater", [_comp(1, .5, 2), _comp(-1, -2, .1)]) == "partly"
    assert j("greater", [_comp(1, -.5, 2), _comp(1, -.1, 2)]) == "not reproduced"  # nothing resolved
    assert j("greater", [_comp(1, .5, 2), _comp(-1, -2, -.5), _comp(-1, -2, -.5)]) == "not reproduced"
    assert j("not_worse", [_comp(-1, -2, .5), _comp(1, .5, 2)]) == "reproduces"
    assert j("not_worse", [_comp(-1, -2, -.5), _comp(1, .5, 2), _comp(1, .5, 2)]) == "partly"
    assert j("not_worse", [_comp(-1, -2, -.5), _comp(-1, -2, -.5), _comp(1, .5, 2)]) == "not reproduced"
    assert j("greater", []) == "no data"


RUNS_META = {"main": {"parent": None, "from_step": None},
             "decay2": {"parent": "main", "from_step": 2}, "decay4": {"parent": "main", "from_step": 4},
             "main-lawa3": {"parent": "main", "averaged": {"averager": "lawa", "window": 3}}}


def _cooldown_records(decay_dq):
    recs = [_rec("main", s, 5.0 - 0.2 * s, 0.01) for s in range(1, 7)]
    recs += [_rec("decay2", 4, 3.9, decay_dq, parent_step=2), _rec("decay4", 6, 3.5, decay_dq, parent_step=4)]
    recs += [_rec("main-lawa3", 4, 3.95, 0.05), _rec("main-lawa3", 6, 3.55, 0.05)]  # averaged: never a cooldown
    return recs


def test_cooldown_verdict_follows_the_data():
    up = verdicts.cooldown({"r": (_cooldown_records(0.03), RUNS_META)})
    assert [c["status"] for c in up] == ["reproduces"]
    comps = up[0]["comparisons"]
    assert [(c["a"], c["step"]) for c in comps] == [("decay2", 4), ("decay4", 6)]
    assert all(c["diff"] == pytest.approx(0.02, abs=0.002) for c in comps)
    down = verdicts.cooldown({"r": (_cooldown_records(0.0), RUNS_META)})
    assert down[0]["status"] == "not reproduced" and down[0]["n_against"] == 2
    same = verdicts.cooldown({"r": (_cooldown_records(0.01), RUNS_META)})
    assert same[0]["n_for"] + same[0]["n_against"] <= 1  # no real difference: (almost) nothing resolved


def test_averaging_verdict_compares_lawa_with_decay_and_the_constant_run():
    recs = [_rec("main", s, 5.0 - 0.2 * s, 0.01) for s in range(1, 7)]
    recs += [_rec("decay2", 4, 3.9, 0.03), _rec("decay4", 6, 3.5, 0.03)]
    # LAWA: FP loss a bit above the cooldown's, ΔQ L lowest -> quantized loss below the cooldown's
    recs += [_rec("main-lawa3", 4, 3.92, 0.002), _rec("main-lawa3", 6, 3.52, 0.002)]
    claims = verdicts.averaging({"r": (recs, RUNS_META)})
    by = {c["claim"].split(" of ")[0] + ("/decay" if "cooldown" in c["claim"] else "/const"): c for c in claims}
    assert [c["status"] for c in claims] == ["reproduces", "reproduces", "reproduces"]
    loss = claims[0]["comparisons"]
    # quantized loss: cooldown 3.9·1.03 = 4.017 vs LAWA 3.92·1.002 = 3.928 (± the block noise)
    assert loss[0]["diff"] == pytest.approx(3.9 * 1.03 - 3.92 * 1.002, abs=0.01) and loss[0]["unit"] == "nats"
    assert len(by) == 3
    with pytest.raises(QrobustError, match="no LAWA"):
        verdicts.averaging({"r": (recs, {k: v for k, v in RUNS_META.items() if k != "main-lawa3"})})


def _lr_run(ratio, label="gptq-w3g128", seed=0):
    """FP loss 6 → 3 along 10 checkpoints; ΔQ L grows as loss falls, ``ratio`` times a common curve."""
    return [_rec("main", s, 6.0 - 0.3 * s, ratio * 0.002 * s, label=label, seed=seed) for s in range(11)]


def test_equal_fp_loss_verdict_orders_runs():
    stores = {"lo": (_lr_run(3.0), {}), "mid": (_lr_run(2.0, seed=1), {}), "hi": (_lr_run(1.0, seed=2), {})}
    good = verdicts.equal_fp_loss(stores, ["lo", "mid", "hi"], 3)  # one claim per neighbouring pair
    assert [(c["comparisons"][0]["a"], c["comparisons"][0]["b"]) for c in good] == [("lo", "mid"), ("mid", "hi")]
    assert [c["status"] for c in good] == ["reproduces", "reproduces"] and good[0]["n"] == 3
    levels = [c["level"] for c in good[0]["comparisons"]]
    assert levels == pytest.approx([3.25, 3.75, 4.25])  # lower half of the overlap [3, 6], evenly spaced
    c = good[0]["comparisons"][0]  # at FP loss 3.25: step 9.1667 -> ΔQ L = ratio·0.002·9.1667
    assert c["dq_a"] == pytest.approx(3 * 0.002 * (6 - 3.25) / 0.3)
    assert c["diff"] == pytest.approx((3 - 2) * 0.002 * (6 - 3.25) / 0.3)
    bad = verdicts.equal_fp_loss(stores, ["hi", "mid", "lo"], 3)
    assert [c["status"] for c in bad] == ["not reproduced", "not reproduced"]
    mixed = verdicts.equal_fp_loss(stores, ["lo", "hi", "mid"], 3)  # holds up to 'hi', breaks beyond
    assert [c["status"] for c in mixed] == ["reproduces", "not reproduced"]


def test_by_variant_keeps_the_common_eval_set_and_skips_records_without_blocks():
    recs = [_rec("main", s, 4.0, 0.01) for s in range(3)] + [_rec("main", 9, 4.0, 0.01, eval_id="old")]
    recs.append({**_rec("main", 8, 4.0, 0.01), "blocks": None})
    out = verdicts.by_variant(recs)
    assert [r.checkpoint.step for r in out["gptq-w3g128"]] == [0, 1, 2]


# -- experiment files ----------------------------------------------------------------------------------------
def test_builtin_experiments_load_and_share_runs(tmp_path):
    assert builtin_names() == ["f2", "f3", "f4", "formats", "scaling", "wd"]
    runs = {n: resolve_runs(load_spec(n)[0], tmp_path) for n in builtin_names()}
    assert runs["f2"]["constant-cooldowns"].out == runs["f4"]["constant-cooldowns"].out  # trained once
    assert runs["f3"]["wsd-lr3e-3"].out == runs["wd"]["wsd-lr3e-3"].out
    assert runs["wd"]["wsd-lr3e-3-wd0"].optim.weight_decay == 0.0
    assert [r.optim.lr for r in runs["f3"].values()] == [3e-4, 1e-3, 3e-3, 1e-2]
    doubled = resolve_runs(load_spec("f2")[0], tmp_path, scale=2.0)["constant-cooldowns"]
    assert doubled.out != runs["f2"]["constant-cooldowns"].out  # another config never resumes an old folder
    assert (doubled.steps, doubled.checkpoint_every, doubled.schedule.warmup_steps) == (3200, 200, 200)
    assert [(b.from_step, b.decay_steps) for b in doubled.branches] == [(800, 800), (1600, 800), (2400, 800)]
    # the experiment files under experiments/ are the built-in ones
    repo = Path(__file__).resolve().parents[1]
    assert (repo / "experiments" / "reproduce" / "f3.yaml").read_text() == load_spec("f3")[1]


def test_scale_train_multiplies_every_step_count():
    cfg = {"steps": 100, "checkpoint_every": 10, "schedule": {"warmup_steps": 5, "decay_steps": 20},
           "branches": [{"from_step": 40, "decay_steps": 30}], "averaging": [{"kind": "lawa", "every": 10}]}
    out = scale_train(cfg, 0.5)
    assert out == {"steps": 50, "checkpoint_every": 5, "schedule": {"warmup_steps": 2, "decay_steps": 10},
                   "branches": [{"from_step": 20, "decay_steps": 15}], "averaging": [{"kind": "lawa", "every": 5}]}
    assert cfg["steps"] == 100  # the input is not touched


def test_bad_experiments_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment 'f9'"):
        load_spec("f9")
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\nfinding: y\nverdict: equal_fp_loss\nbase: {}\nruns: {a: {}, b: {}}\norder: [a, c]\n")
    with pytest.raises(ConfigError, match="'order' must name"):
        load_spec(bad)
    with pytest.raises(ConfigError, match="scale must be positive"):
        resolve_runs(load_spec("f2")[0], tmp_path, scale=0)
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "reproduce", "nope", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown experiment 'nope'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "qrobust.cli", "reproduce", "f2", "--scale", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "positive number" in r.stderr


# -- end to end (micro model, a few dozen steps) --------------------------------------------------------------
TINY = {"base": {"steps": 30, "checkpoint_every": 10, "batch_size": 8, "model": {"preset": "micro"},
                 "data": {"max_chars": 300_000, "seq_len": 64, "vocab_size": 512}, "schedule": {"warmup_steps": 5}},
        "sweep": {"bits": [3], "group_sizes": [32], "eval": {"n_blocks": 12}, "calibration": {"n_samples": 8}}}


def test_f2_then_f4_share_one_run_and_write_pages(tmp_path):
    import qrobust
    over = {**TINY, "base": {**TINY["base"], "branches": [{"from_step": 10, "decay_steps": 10},
                                                            {"from_step": 20, "decay_steps": 10}]}}
    f4 = {**over, "sweep": {**over["sweep"], "average": [{"averager": "lawa", "window": 2, "runs": ["main"]}]}}
    (r2,) = qrobust.reproduce("f2", out=tmp_path, overrides=over, progress=False)
    (r4,) = qrobust.reproduce("f4", out=tmp_path, overrides=f4, progress=False)
    assert len(list((tmp_path / "runs").iterdir())) == 1 and r4["train_s"] < r2["train_s"]
    assert [c["cell"] for c in r2["claims"]] == ["gptq-w3g32"] and r2["claims"][0]["n"] == 2
    assert len(r4["claims"]) == 3 and all(c["n"] == 2 for c in r4["claims"])
    # the verdict is what the stored records say: recompute one comparison from them
    from qrobust.results.compare import compare_dq
    from qrobust.results.store import Store
    recs = Store(r2["runs"]["constant-cooldowns"]["sweep_config"]["out"], create=False).records()
    at = {(r.checkpoint.run, r.checkpoint.step): r for r in recs}
    first = r2["claims"][0]["comparisons"][0]
    assert first["diff"] == pytest.approx(compare_dq(at[("decay10", 20)], at[("main", 20)])["diff"])
    saved = json.loads((tmp_path / "f2" / "verdict.json").read_text())
    assert saved["summary"] == r2["summary"] and saved["runs"]["constant-cooldowns"]["train_config"]["seed"] == 0
    page = (tmp_path / "f4" / "index.html").read_text()
    assert "Provenance" in page and "training seed 0" in page and "averaging_" in page
    assert {Path(f).name.split("_")[0] for f in r2["figures"]} == {"dq", "loss", "stable"}
    assert sorted(p.name for p in (tmp_path / "f4" / "figures").iterdir()) == ["averaging_constant-cooldowns_gptq-w3g32.png"]
    index = (tmp_path / "index.html").read_text()  # both experiments, linked
    assert 'href="f2/index.html"' in index and 'href="f4/index.html"' in index and index.count("<li") == 4
    # another experiment adds 4-bit records to the shared results folder: F2's own verdict keeps its variants
    wider = {**over, "sweep": {**over["sweep"], "bits": [3, 4]}}
    (rw,) = qrobust.reproduce("f2", out=tmp_path, overrides=wider, progress=False)
    assert [c["cell"] for c in rw["claims"]] == ["gptq-w3g32", "gptq-w4g32"]
    (again,) = qrobust.reproduce("f2", out=tmp_path, overrides=over, progress=False)
    assert [c["cell"] for c in again["claims"]] == ["gptq-w3g32"] and again["claims"] == r2["claims"]


def test_equal_fp_loss_experiment_end_to_end(tmp_path):
    import qrobust
    over = {**TINY, "levels": 2, "base": {**TINY["base"], "schedule": {"warmup_steps": 5, "decay_steps": 10}}}
    (r,) = qrobust.reproduce("wd", out=tmp_path, overrides=over, progress=False)
    (claim,) = r["claims"]
    assert claim["n"] == 2 and all(c["a"] == "wsd-lr3e-3-wd0" and c["paired"] for c in claim["comparisons"])
    assert claim["status"] in ("reproduces", "partly", "not reproduced")
    assert [Path(f).name for f in r["figures"]] == ["wd_gptq-w3g32.png"]
    # resumable: a second call trains and sweeps nothing new and gives the same verdict
    (again,) = qrobust.reproduce("wd", out=tmp_path, overrides=over, progress=False)
    assert again["claims"] == r["claims"]


def synthetic_page(tmp_path):
    """A reproduction page from synthetic records (no training): (page path, result, figures)."""
    from qrobust.reporting.runs_compare import runs_figure
    from qrobust.workflows.reproduction.page import write_page
    runs = {"lo": _lr_run(3.0), "hi": _lr_run(1.0, seed=2)}
    claims = verdicts.equal_fp_loss({k: (v, {}) for k, v in runs.items()}, ["lo", "hi"], 3)
    figs = [runs_figure(runs, "gptq-w3g128", "x: <finding>", tmp_path / "x_gptq.png", claims[0]["comparisons"])]
    cfg = {"train_config": {"seed": 5, "data": {"seed": 0}, "out": "runs/lo"},
           "sweep_config": {"calibration": {"seed": 3}, "out": "results/lo"}, "report": str(tmp_path / "r.html")}
    result = {"experiment": "x", "finding": "lower <ΔQ L>", "summary": "x: summary", "claims": claims, "scale": 1.0,
              "model": None, "train_s": 1.0, "sweep_s": 2.0, "created": "now", "spec_yaml": "name: x\n",
              "versions": {"qrobust": "0"}, "runs": {"lo": cfg, "hi": cfg}}
    return write_page(result, figs, runs["lo"] + runs["hi"], {}, tmp_path / "index.html"), result, figs


def test_page_holds_verdict_comparisons_figures_and_provenance(tmp_path):
    path, result, figs = synthetic_page(tmp_path)
    page = path.read_text()
    assert page.count('<tr class="claim"') == 1 and page.count('<tr class="comparison"') == 3
    assert "lower &lt;ΔQ L&gt;" in page and "<finding>" not in page  # escaped
    assert page.count("data:image/png;base64,") == len(figs) == 1
    assert "training seed 5" in page and "calibration seed 3" in page and "name: x" in page
    assert 'href="r.html"' in page  # links relative to the page, so the folder can move


def test_group_size_wider_than_the_model_fails_before_training(tmp_path):
    """f2 sweeps group size 128; the micro model's linears read 32 features: refused up front, nothing trained."""
    from qrobust.errors import ConfigError
    from qrobust.workflows.reproduction.run import reproduce_one
    with pytest.raises(ConfigError, match=r"group size 128 is larger than the 'micro' model's width \(32"):
        reproduce_one("f2", out=tmp_path / "r", scale=0.1, model="micro", progress=False)
    assert not any((tmp_path / "r").rglob("model.safetensors"))
