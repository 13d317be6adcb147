"""LR schedules at key steps against closed forms; branches agree with the main run before they decay."""
from __future__ import annotations

import math

import pytest

from qrobust.training.schedule import Schedule


def test_constant_with_linear_warmup():
    s = Schedule(peak_lr=2.0, total_steps=100, warmup_steps=10, kind="constant")
    assert s.lr(0) == 0.0
    assert s.lr(5) == pytest.approx(1.0)
    assert s.lr(10) == pytest.approx(2.0)
    assert s.lr(99) == pytest.approx(2.0)
    assert [s.phase(i) for i in (0, 9, 10, 99)] == ["warmup", "warmup", "stable", "stable"]


def test_cosine_to_final_ratio():
    s = Schedule(peak_lr=1.0, total_steps=110, warmup_steps=10, kind="cosine", final_lr_ratio=0.1)
    # progress p = (step - 10) / 100; factor = 0.1 + 0.9 * 0.5 * (1 + cos(pi p))
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s.lr(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s.lr(110) == pytest.approx(0.1)
    assert s.phase(50) == "decay"


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_decay_shapes(shape, mid):
    s = Schedule(peak_lr=1.0, total_steps=70, warmup_steps=10, kind="wsd", decay_steps=20, decay_shape=shape)
    assert s.lr(49) == pytest.approx(1.0)
    assert s.lr(50) == pytest.approx(1.0)  # progress 0 at the first decay step
    assert s.lr(60) == pytest.approx(mid)
    assert s.lr(70) == pytest.approx(0.0)
    assert s.phase(49) == "stable" and s.phase(50) == "decay"


def test_wsd_quarter_point_linear_with_final_ratio():
    s = Schedule(peak_lr=4.0, total_steps=140, warmup_steps=0, kind="wsd", decay_steps=40, final_lr_ratio=0.25)
    # progress 1/4 -> factor 0.75 * (1 - 0.25) + 0.25 = 0.8125
    assert s.lr(110) == pytest.approx(4.0 * 0.8125)


def test_branch_matches_main_until_from_step_then_decays():
    main = Schedule(peak_lr=1e-3, total_steps=1000, warmup_steps=100, kind="constant")
    b = main.branch(400, 200, "linear", 0.0)
    for step in (0, 50, 100, 250, 399, 400):
        assert b.lr(step) == pytest.approx(main.lr(step))
    assert b.lr(500) == pytest.approx(0.5e-3)
    assert b.lr(600) == 0.0
    assert b.phase(399) == "stable" and b.phase(400) == "decay"


def test_curve_is_sampled_from_the_same_function():
    s = Schedule(peak_lr=1.0, total_steps=50, warmup_steps=5, kind="wsd", decay_steps=10)
    for step, lr in s.curve(20):
        assert lr == s.lr(step)
    assert s.curve(20)[0][0] == 0 and s.curve(20)[-1][0] == 50
