"""Where a sweep's time goes (issue 21): the calibration clock, the records' timings, the summary's phases
and the report's section."""
from __future__ import annotations

import json
import time

import pytest

from qrobust.quant.timing import calibrating, calibration_clock
from qrobust.results.timings import variant_phases
from qrobust.sweeps import sweep
from qrobust.sweeps.summary import SweepSummary


def test_calibrating_counts_once_when_nested_and_only_on_an_open_clock():
    with calibrating():  # no clock: nothing to count, nothing breaks
        time.sleep(0.01)
    with calibration_clock() as outer:
        with calibrating():
            time.sleep(0.05)
            with calibrating():  # nested: already counted by the outer block
                time.sleep(0.05)
        time.sleep(0.05)  # outside calibrating(): not counted
        with calibration_clock() as inner:  # a variant inside measures on its own clock
            with calibrating():
                time.sleep(0.02)
    assert 0.1 <= outer.seconds < 0.15
    assert 0.02 <= inner.seconds < 0.05


def test_variant_phases_are_disjoint():
    t = {"calib_tokens_s": 0.5, "calibration_s": 2.0, "quantize_s": 3.0, "eval_s": 1.25}
    assert variant_phases(t) == {"calibration": 2.5, "quantize": 1.0, "eval": 1.25}
    assert variant_phases({"quantize_s": 3.0, "eval_s": 1.0}) == {"calibration": 0.0, "quantize": 3.0, "eval": 1.0}


def test_summaries_merge_by_phase_and_variant(tmp_path):
    a, b = SweepSummary(out=tmp_path), SweepSummary(out=tmp_path)
    a.add_phase("load", 1.0)
    a.add_variant("gptq-w4g16", {"calibration_s": 2.0, "quantize_s": 5.0, "eval_s": 1.0})
    b.add_phase("load", 0.5)
    b.add_variant("gptq-w4g16", {"calib_tokens_s": 1.0, "calibration_s": 1.0, "quantize_s": 2.0, "eval_s": 3.0})
    b.records_written = 1
    part = {k: v for k, v in vars(b).items() if k not in ("out", "new_keys", "seconds")}
    a.merge(part)
    # calibration 2 + (1 + 1); quantize (5 - 2) + (2 - 1); eval 1 + 3
    assert a.phase_seconds == {"load": 1.5, "calibration": 4.0, "quantize": 4.0, "eval": 4.0}
    assert a.variant_seconds == {"gptq-w4g16": {"n": 2, "calibration": 4.0, "quantize": 4.0, "eval": 4.0}}
    assert a.records_written == 1
    a.seconds = 20.0
    lines = a.time_lines()
    assert lines[0] == "time by phase: load 1.5 s, calibration 4.0 s, quantize 4.0 s, eval 4.0 s, other 6.5 s"
    assert lines[1] == "  gptq-w4g16: 2 records, per checkpoint calibration 2.00 s, quantize 2.00 s, eval 2.00 s"


def _records(folder):
    return [json.loads(p.read_text()) for p in (folder / "records").glob("*.json")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_sweep_records_and_sums_its_time_by_phase(tiny_run, tmp_path, stream):
    cfg = {"trajectory": f"{tiny_run}?run=decay8", "out": str(tmp_path / "res"), "bits": [3], "group_sizes": [16],
           "methods": ["rtn", {"name": "gptq"}], "eval": {"n_blocks": 4, "batch_size": 4},
           "calibration": {"n_samples": 4}, "stream": stream}
    s = sweep(cfg, progress=False)
    recs = _records(tmp_path / "res")
    assert len(recs) == 2
    for r in recs:
        t = r["timings"]
        assert set(t) >= {"load_s", "fp_eval_s", "calib_tokens_s", "calibration_s", "quantize_s", "eval_s"}
        assert 0 <= t["calibration_s"] <= t["quantize_s"] and t["load_s"] > 0 and t["fp_eval_s"] > 0
        if r["variant"]["method"] == "rtn":
            assert (t["calibration_s"], t["calib_tokens_s"]) == (0, 0), t
        else:  # GPTQ's Hessian forwards (and, streamed, nothing else re-runs its blocks)
            assert t["calibration_s"] > 0
    assert set(s.phase_seconds) == {"load", "fp_eval", "calibration", "quantize", "eval"}
    assert sum(s.phase_seconds.values()) <= s.seconds
    labels = {r["variant"]["label"] for r in recs}
    assert set(s.variant_seconds) == labels and all(d["n"] == 1 for d in s.variant_seconds.values())
    by_label = {r["variant"]["label"]: variant_phases(r["timings"]) for r in recs}
    for label, d in s.variant_seconds.items():  # the summary adds exactly what the records hold
        assert {k: d[k] for k in ("calibration", "quantize", "eval")} == pytest.approx(by_label[label])


def test_the_report_shows_where_the_time_went(tmp_path):
    from qrobust.reporting.timings import timings_section
    from qrobust.results.records import VariantRecord

    def rec(ck, label, t):
        return VariantRecord.parse({"kind": "records", "key": f"{ck}-{label}", "trajectory": "t",
                                    "checkpoint": {"name": ck, "step": 1},
                                    "variant": {"method": "gptq", "bits": 4, "group_size": 16, "label": label},
                                    "timings": t})
    recs = [rec("a", "gptq-w4g16", {"load_s": 1.0, "fp_eval_s": 2.0, "calibration_s": 1.0, "quantize_s": 3.0,
                                    "eval_s": 1.0}),
            rec("b", "gptq-w4g16", {"load_s": 3.0, "fp_eval_s": 4.0, "calibration_s": 3.0, "quantize_s": 4.0,
                                    "eval_s": 2.0}),
            rec("a", "rtn-w4g16", {"load_s": 1.0, "fp_eval_s": 2.0, "quantize_s": 0.5, "eval_s": 1.0})]
    html = timings_section(recs)
    assert "load 2.00 s, FP evaluation 3.00 s" in html  # means over the 2 checkpoints
    # gptq: calibration (1+3)/2, quantize (2+1)/2, eval (1+2)/2, total 1+2+1 + 3+1+2
    assert "<td class=\"l\">gptq-w4g16</td><td>2</td><td>2.00</td><td>1.50</td><td>1.50</td><td>10.0</td>" in html
    assert "<td class=\"l\">rtn-w4g16</td><td>1</td><td>0.00</td><td>0.50</td><td>1.00</td><td>1.5</td>" in html
    assert timings_section([rec("a", "x", {})]) is None


def test_static_scales_and_smoothquant_passes_count_as_calibration(tmp_path, monkeypatch):
    """The passes that observe static activation scales or SmoothQuant's amax are calibration (in memory and
    streamed); a weight-only RTN variant has none, exactly."""
    import torch

    from qrobust.models import build_model, load_checkpoint
    from qrobust.quant import QuantSpec, quantized
    from qrobust.quant.pipelines.streamed import stream_checkpoint
    build_model("llama", "micro", vocab_size=96, max_positions=64, seed=3).save_pretrained(tmp_path / "m")
    model = load_checkpoint(tmp_path / "m")
    calib = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
    silu = torch.nn.functional.silu

    def slow_silu(*a, **k):  # every MLP activation sleeps 20 ms, so any forward inside a clock is unmistakable
        time.sleep(0.02)
        return silu(*a, **k)
    monkeypatch.setattr(torch.nn.functional, "silu", slow_silu)
    static = QuantSpec(method="rtn", format="int8-channel+a-int8-tensor")
    smooth = QuantSpec(method="rtn", format="w8a8-int8", options=(("smoothquant", 0.5),))
    plain = QuantSpec(method="rtn", bits=4, group_size=16)
    for spec in (static, smooth):
        with quantized(model, spec, calib) as qr:
            assert 0.02 <= qr.calibration_seconds <= qr.seconds
    with quantized(model, plain) as qr:
        assert qr.calibration_seconds == 0 and qr.seconds > 0
    blocks = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(1))
    run = stream_checkpoint(tmp_path / "m", [static, smooth, plain], blocks, 2,
                            {static: calib, smooth: calib})
    got = {v.spec: v.calibration_seconds for v in run.variants}
    n_blocks = len(run.block_seconds)
    assert got[static] >= 0.02 * n_blocks and got[smooth] >= 0.02 * n_blocks and got[plain] == 0
    assert all(v.calibration_seconds <= v.quantize_seconds for v in run.variants)
