"""The demo end to end (--quick), and its stable-vs-decay summary on hand-built records."""
from __future__ import annotations

import json

import pytest

from qrobust.cli import main
from qrobust.workflows.demo import stable_vs_decay, verdict


def _rec(run, step, bits, dq, loss_fp, parent_step=None, method="rtn"):
    return {"checkpoint": {"run": run, "step": step, "parent_step": parent_step},
            "variant": {"label": f"{method}-w{bits}g128", "bits": bits, "method": method},
            "metrics": {"dq_rel": dq, "loss_fp": loss_fp}}


def test_stable_vs_decay_pairs_branch_end_with_control_at_same_step():
    recs = [_rec("main", 100, 3, 0.010, 3.0), _rec("main", 200, 3, 0.020, 2.9),
            _rec("b", 150, 3, 0.050, 2.95, 100), _rec("b", 200, 3, 0.030, 2.8, 100),
            _rec("c", 300, 3, 0.1, 2.7, 200)]  # no control at 300 -> skipped
    rows = stable_vs_decay(recs)
    assert len(rows) == 1
    r = rows[0]
    assert (r["branch"], r["step"], r["from_step"]) == ("b", 200, 100)
    assert r["dq_decay"] == 0.030 and r["dq_control"] == 0.020 and r["dq_branch_start"] == 0.010
    v = verdict(rows)
    assert "rtn 3-bit: decay > control in 1 of 1, median ratio 1.50x" in v and "visible at this scale everywhere" in v


def test_verdict_is_per_method_and_counts_each_pair_once():
    recs = [_rec("main", 200, 3, 0.020, 2.9, method=m) for m in ("rtn", "gptq")]
    recs += [_rec("b", 200, 3, 0.030, 2.8, 100, method="rtn"), _rec("b", 200, 3, 0.010, 2.8, 100, method="gptq")]
    v = verdict(stable_vs_decay(recs))
    assert "gptq 3-bit: decay > control in 0 of 1" in v and "rtn 3-bit: decay > control in 1 of 1" in v
    assert "visible at this scale for rtn 3-bit and not for the others" in v
    assert "FP loss was lower after decay in 1 of 1 pairs" in v


def test_verdict_says_not_visible_when_decay_never_raises():
    rows = [{"bits": 4, "dq_decay": 0.01, "dq_control": 0.02, "loss_fp_decay": 2.0, "loss_fp_control": 2.1}]
    assert "NOT visible" in verdict(rows) and "4-bit: decay > control in 0 of 1" in verdict(rows)


def test_verdict_names_the_bit_widths_where_it_shows():
    rows = [{"bits": 2, "dq_decay": 0.05, "dq_control": 0.04, "loss_fp_decay": 2.0, "loss_fp_control": 2.1},
            {"bits": 2, "dq_decay": 0.06, "dq_control": 0.04, "loss_fp_decay": 2.0, "loss_fp_control": 2.1},
            {"bits": 4, "dq_decay": 0.01, "dq_control": 0.02, "loss_fp_decay": 2.0, "loss_fp_control": 2.1}]
    v = verdict(rows)
    assert "2-bit: decay > control in 2 of 2, median ratio 1.38x" in v
    assert "visible at this scale for 2-bit and not for the others" in v


def test_verdict_counts_pairs_resolved_by_the_paired_bootstrap():
    """Per-block losses: the decayed model's ΔQ L is 2 % on every block, the control's 1 %: resolved."""
    fp = [100.0 + 7 * i % 13 for i in range(16)]

    def with_blocks(rec, ratio):
        return {**rec, "eval_set": {"id": "e"}, "blocks": {"nll_fp": fp, "nll_q": [x * ratio for x in fp]}}

    recs = [with_blocks(_rec("main", 200, 3, 0.01, 2.9), 1.01), with_blocks(_rec("b", 200, 3, 0.02, 2.8, 100), 1.02)]
    (row,) = stable_vs_decay(recs)
    assert row["decay_vs_control"]["greater"] and row["decay_vs_control"]["diff"] == pytest.approx(0.01)
    assert "decay > control in 1 of 1 (1 with the 95 % paired-bootstrap interval above 0)" in verdict([row])


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoints"] == 5  # main 20/40/60 + two branch endpoints
    assert summary["records"] == 30  # 5 checkpoints x {gptq, rtn} x {2, 3, 4} bits
    assert len(summary["rows"]) == 12  # 2 branches x 2 methods x 3 bit-widths with a control at the same step
    assert summary["verdict"] in printed
    assert (out / "results" / "report" / "index.html").is_file()
    # numbers in the summary are the store's numbers
    recs = {(r["checkpoint"]["run"], r["checkpoint"]["step"], r["variant"]["label"]): r
            for r in map(json.loads, (p.read_text() for p in (out / "results" / "records").glob("*.json")))}
    for row in summary["rows"]:
        assert row["dq_decay"] == recs[(row["branch"], row["step"], row["variant"])]["metrics"]["dq_rel"]
        assert row["dq_control"] == recs[("main", row["step"], row["variant"])]["metrics"]["dq_rel"]
    # a second run resumes: nothing retrained, nothing re-evaluated
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
