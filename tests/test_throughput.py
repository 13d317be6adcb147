"""Throughput meter and progress-bar postfix (issue 17): tokens/s over a recent window without the warm-up
step, MFU = tokens/s × FLOPs per token / (peak × world size), checked against hand-computed numbers."""
from __future__ import annotations

import pytest

import qrobust.training.throughput as throughput_module
from qrobust.training.progress import format_postfix, short_count
from qrobust.training.throughput import TIMING_KEYS, Throughput


def test_first_step_is_warm_up_and_left_out():
    meter = Throughput(flops_per_token=6e6, peak_flops=1e12, world_size=2)
    meter.step(1000, 5.0)  # compile + warm-up
    assert meter.metrics() == {} and meter.tokens_per_s is None and meter.mfu is None
    for tokens, seconds in [(1000, 0.5), (1000, 0.25), (2000, 0.25)]:
        meter.step(tokens, seconds)
    # 4000 tokens in 1.0 s (a ratio of sums; the mean of the per-step rates would be 4666.7)
    assert meter.tokens_per_s == pytest.approx(4000.0)
    # 4000 tok/s × 6e6 FLOP/tok = 2.4e10 FLOP/s of 2 × 1e12 peak
    assert meter.mfu == pytest.approx(0.012)
    assert meter.metrics() == pytest.approx({"tokens_per_s": 4000.0, "mfu": 0.012})
    assert set(meter.metrics()) == set(TIMING_KEYS)


def test_window_keeps_only_the_recent_steps_and_summary_keeps_all():
    meter = Throughput(flops_per_token=100.0, peak_flops=1e6, world_size=1, window=2)
    for tokens, seconds in [(999, 9.0), (100, 1.0), (300, 1.0), (500, 1.5)]:
        meter.step(tokens, seconds)
    assert meter.tokens_per_s == pytest.approx(800 / 2.5)  # the last two: 320 tok/s
    assert meter.mfu == pytest.approx(320 * 100 / 1e6)
    assert meter.summary() == pytest.approx({"tokens": 900, "seconds": 3.5, "tokens_per_s": 900 / 3.5,
                                             "mfu": 900 / 3.5 * 100 / 1e6})


def test_unknown_peak_gives_tokens_per_s_and_no_mfu():
    meter = Throughput(flops_per_token=1.0, peak_flops=None, skip_first=0)
    meter.step(64, 0.5)
    assert meter.metrics() == {"tokens_per_s": 128.0}
    assert "mfu" not in meter.summary()


def test_measure_times_the_block_as_one_step(monkeypatch):
    clock = iter([10.0, 10.0, 20.0, 20.25])
    monkeypatch.setattr(throughput_module.time, "perf_counter", lambda: next(clock))
    meter = Throughput(flops_per_token=1.0, peak_flops=None)
    with meter.measure(1000):  # warm-up: 10 s, left out
        pass
    with meter.measure(1000):
        pass
    assert meter.tokens_per_s == pytest.approx(4000.0)


@pytest.mark.parametrize("kwargs", [dict(flops_per_token=0, peak_flops=1.0), dict(flops_per_token=1, peak_flops=0),
                                    dict(flops_per_token=1, peak_flops=None, world_size=0)])
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Throughput(**kwargs)


def test_postfix_shows_loss_lr_tokens_and_mfu_briefly():
    got = format_postfix({"loss": 2.34567, "lr": 3e-4, "tokens_per_s": 123456.0, "mfu": 0.4123, "grad_norm": 1.0})
    assert got == {"loss": "2.346", "lr": "3.00e-04", "tok/s": "123k", "mfu": "41.2%"}
    assert list(got) == ["loss", "lr", "tok/s", "mfu"]
    assert format_postfix({"loss": 1.0, "lr": 0.1, "mfu": None}) == {"loss": "1.000", "lr": "1.00e-01"}


@pytest.mark.parametrize("value, text", [(512, "512"), (999.4, "999"), (999.6, "1k"), (12345, "12.3k"),
                                         (1234567, "1.23M"), (2.5e9, "2.5G"), (0.5, "0.5")])
def test_short_count(value, text):
    assert short_count(value) == text
