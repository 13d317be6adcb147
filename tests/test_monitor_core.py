"""The monitor on one model: values against an independent recomputation, the guard, alerts, refusals, config."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qrobust.config import AlertRule, DataConfig, MonitorConfig, TrainConfig, parse_config
from qrobust.errors import ConfigError
from qrobust.models import load_checkpoint
from qrobust.monitor import Monitor
from qrobust.monitor.alerts import fired
from qrobust.monitor.guard import weights_digest
from qrobust.quant import quantize
from qrobust.stats import dq_interval

DATA = DataConfig(corpus="builtin", max_chars=200_000, seq_len=32, vocab_size=300)


def _model(tiny_run: Path, step: int = 8):
    return load_checkpoint(tiny_run / "checkpoints" / "main" / f"step-{step:07d}")


def _blocks(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 300, (n, 32), generator=g)


def _block_nll(model, blocks: torch.Tensor) -> list[float]:
    """Summed next-token NLL per block, one block at a time via log_softmax (not evaluate_loss)."""
    out = []
    with torch.no_grad():
        for b in blocks:
            logp = F.log_softmax(model(input_ids=b[None]).logits[0, :-1].double(), dim=-1)
            out.append(float(-logp.gather(1, b[1:, None]).sum()))
    return out


def test_values_equal_an_independent_recomputation(tiny_run):
    model = _model(tiny_run)
    blocks = _blocks()
    cfg = MonitorConfig(n_blocks=6, batch_size=4, bits=[3], group_size=16, n_boot=200)
    res = Monitor(cfg, blocks).evaluate(model, 100)
    fp = _block_nll(model, blocks)
    qmodel, _ = quantize(model, "rtn", bits=3, group_size=16)  # a quantized copy: another code path
    q = _block_nll(qmodel, blocks)
    m = res.metrics
    n_targets = 6 * 31
    assert m["monitor/loss_fp"] == pytest.approx(sum(fp) / n_targets, rel=1e-6)
    assert m["monitor/loss_q/rtn-w3g16"] == pytest.approx(sum(q) / n_targets, rel=1e-6)
    assert m["monitor/dq/rtn-w3g16"] == pytest.approx(sum(q) / sum(fp) - 1, rel=1e-4, abs=1e-9)
    ci = dq_interval(fp, q, 200, 0.95, seed=0)
    assert m["monitor/dq_low/rtn-w3g16"] == pytest.approx(ci["low"], rel=1e-4, abs=1e-8)
    assert m["monitor/dq_high/rtn-w3g16"] == pytest.approx(ci["high"], rel=1e-4, abs=1e-8)
    assert m["monitor/dq_low/rtn-w3g16"] < m["monitor/dq/rtn-w3g16"] < m["monitor/dq_high/rtn-w3g16"]
    assert m["monitor/seconds"] > 0 and res.seconds == m["monitor/seconds"] and res.step == 100


def test_the_guard_leaves_rng_modes_grad_mode_and_weights_as_found(tiny_run):
    model = _model(tiny_run)
    model.train()
    model.gpt_neox.layers[0].eval()  # a mixed state must come back mixed
    modes = [m.training for m in model.modules()]
    before = weights_digest(model)
    mon = Monitor(MonitorConfig(n_blocks=6, batch_size=4, bits=[3, 4], group_size=16, n_boot=50), _blocks())
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    expect = (torch.rand(5), random.random(), np.random.rand())
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mon.evaluate(model, 4)
        assert torch.is_autocast_enabled("cpu")  # autocast as found
    got = (torch.rand(5), random.random(), np.random.rand())
    assert torch.equal(got[0], expect[0]) and got[1:] == expect[1:]
    assert [m.training for m in model.modules()] == modes
    assert torch.is_grad_enabled()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_gptq_every_kth_evaluation(tiny_run):
    cfg = MonitorConfig(every=10, n_blocks=4, batch_size=4, bits=[3], group_size=16, gptq_every=2, n_boot=20)
    mon = Monitor(cfg, _blocks(4), _blocks(4))
    assert [s.label for s in mon.specs(10)] == ["rtn-w3g16"]
    assert [s.label for s in mon.specs(20)] == ["rtn-w3g16", "gptq-w3g16"]
    assert [s.label for s in mon.specs(30)] == ["rtn-w3g16"]
    assert mon.due(20) and not mon.due(0) and not mon.due(25)
    m = mon.evaluate(_model(tiny_run), 20).metrics
    assert {"monitor/dq/gptq-w3g16", "monitor/loss_q/gptq-w3g16"} <= set(m)


def _hist(values: list[float | None], metric: str = "dq/rtn-w3g128") -> list[tuple[int, dict]]:
    return [(10 * (i + 1), {} if v is None else {f"monitor/{metric}": v}) for i, v in enumerate(values)]


def test_alert_rule_fires_exactly_when_the_rise_exceeds_it():
    rule = AlertRule(metric="dq/rtn-w3g128", rise_pct=10, window=2)
    values = [1.0, 1.05, 1.12, 1.10, 1.25, 1.0]
    # by hand: i=2 (1.12-1.0)/1.0=0.12 > 0.1; i=3 0.05/1.05; i=4 (1.25-1.12)/1.12=0.116; i=5 falls
    got = {i: [a.rise for a in fired([rule], _hist(values[: i + 1]))] for i in range(len(values))}
    assert [i for i, r in got.items() if r] == [2, 4]
    assert got[2][0] == pytest.approx(0.12) and got[4][0] == pytest.approx(0.13 / 1.12)
    neg = fired([rule], _hist([-0.5, -0.45, -0.4]))  # a negative base: the rise is relative to |v|
    assert len(neg) == 1 and neg[0].rise == pytest.approx(0.2)
    # a metric logged only at some evaluations (GPTQ): its own series, and no alert where it is absent
    sparse = _hist([1.0, None, 1.5, None, 1.6])
    assert fired([AlertRule(metric="dq/rtn-w3g128", rise_pct=10, window=1)], sparse[:3])[0].rise == pytest.approx(0.5)
    assert fired([AlertRule(metric="dq/rtn-w3g128", rise_pct=10, window=1)], sparse[:4]) == []
    assert fired([AlertRule(metric="dq/rtn-w3g128", rise_pct=10, window=1)], sparse) == []  # 1.5 -> 1.6: 6.7 %


def test_evaluate_warns_and_logs_the_alert_and_restore_replays_history(tiny_run):
    rule = {"metric": "loss_fp", "rise_pct": 1, "window": 1}
    cfg = MonitorConfig(n_blocks=4, batch_size=4, bits=[3], group_size=16, n_boot=20, alerts=[rule])
    mon = Monitor(cfg, _blocks(4))
    mon.restore([{"step": 4, "loss": 5.0}, {"step": 4, "monitor/loss_fp": 1.0, "monitor/seconds": 0.1}])
    assert [h.step for h in mon.history] == [4]
    with pytest.warns(UserWarning, match=r"monitor: loss_fp rose by .* over the last 1 evaluation"):
        res = mon.evaluate(_model(tiny_run, 8), 8)
    rise = res.metrics["monitor/loss_fp"] / 1.0 - 1
    assert res.alerts == ["loss_fp"] and res.metrics["monitor/alert/loss_fp"] == pytest.approx(rise)


def _refusal(fn) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_startup_refusals_are_one_line(tiny_run):
    model = _model(tiny_run)
    blocks = _blocks(4)
    wide = Monitor(MonitorConfig(n_blocks=4, group_size=64), blocks)
    assert "'gpt_neox.layers.0.attention.query_key_value' (32 input features)" in _refusal(lambda: wide.check(model))
    nolin = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    assert "no linear layer" in _refusal(lambda: Monitor(MonitorConfig(n_blocks=4), blocks).check(nolin))
    bad = Monitor(MonitorConfig(n_blocks=4, group_size=16, predictors=["no-such-predictor"]), blocks)
    assert "no-such-predictor" in _refusal(lambda: bad.check(model))
    alert = Monitor(MonitorConfig(n_blocks=4, group_size=16, alerts=[{"metric": "dq/rtn-w2g16", "rise_pct": 5}]), blocks)
    assert "'dq/rtn-w2g16' is not a monitored metric" in _refusal(lambda: alert.check(model))
    nocal = Monitor(MonitorConfig(n_blocks=4, group_size=16, gptq_every=1), blocks)
    assert "calibration" in _refusal(lambda: nocal.check(model))


def test_for_training_builds_the_sweep_blocks_and_refuses_what_does_not_fit():
    from qrobust.data.evalset import build_eval_set
    from qrobust.data.prepare import prepare_training
    from qrobust.config import EvalConfig
    tok = prepare_training(DATA).tokenizer
    mon = Monitor.for_training(MonitorConfig(n_blocks=5, group_size=16), DATA, tok, "fp")
    ref = build_eval_set(EvalConfig(n_blocks=5), DATA, tok, "fp").blocks
    assert torch.equal(mon.eval_blocks, ref) and mon.calibration is None
    have = build_eval_set(EvalConfig(n_blocks=10**6), DATA, tok, "fp").blocks.shape[0]
    msg = _refusal(lambda: Monitor.for_training(MonitorConfig(n_blocks=have + 1), DATA, tok, "fp"))
    assert f"holds only {have} blocks" in msg and f"at most {have}" in msg
    msg = _refusal(lambda: Monitor.for_training(MonitorConfig(n_blocks=4, gptq_every=1, calib_samples=10**6),
                                                DATA, tok, "fp"))
    assert "too few tokens for 1000000 calibration windows of 32 tokens" in msg
    withcal = Monitor.for_training(MonitorConfig(n_blocks=4, gptq_every=1, calib_samples=3), DATA, tok, "fp")
    assert tuple(withcal.calibration.shape) == (3, 32)


def test_config_dump_is_unchanged_without_a_monitor_and_validated_with_one():
    base = {"name": "x", "out": "o"}
    plain = TrainConfig.model_validate(base)
    assert "monitor" not in plain.model_dump() and "monitor" not in json.loads(plain.model_dump_json())
    on = TrainConfig.model_validate({**base, "monitor": {"every": 50}})
    assert on.model_dump()["monitor"]["every"] == 50 and on.monitor.bits == [3, 4]
    for bad, what in [({"bits": [9]}, "bits must be an integer from 2 to 8"), ({"group_size": 0}, "group size"),
                      ({"every": 0}, "monitor.every"), ({"alerts": [{"metric": "monitor/dq", "rise_pct": 5}]},
                                                        "without the 'monitor/' prefix"),
                      ({"alerts": [{"metric": "dq", "rise_pct": 0}]}, "rise_pct"), ({"typo": 1}, "monitor.typo")]:
        with pytest.raises(ConfigError, match=what):
            parse_config(TrainConfig, {**base, "monitor": bad})
