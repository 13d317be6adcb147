"""The one home of the LR formulas (qrobust.schedules): the same floats as transformers' scheduler functions
at every step of a run (training's numbers must not move), and presets' LR facts read through the same
Schedule object."""
from __future__ import annotations

import math

import pytest
import torch

from qrobust.schedules import Schedule, preset_schedule
from qrobust.sources import lr_at, preset_files
from qrobust.training.schedule import torch_scheduler

CASES = [
    Schedule(peak_lr=3e-3, total_steps=60, warmup_steps=7, kind="constant"),
    Schedule(peak_lr=3e-3, total_steps=60, warmup_steps=0, kind="constant"),
    Schedule(peak_lr=1e-3, total_steps=97, warmup_steps=11, kind="cosine", final_lr_ratio=0.1),
    Schedule(peak_lr=1e-3, total_steps=50, warmup_steps=0, kind="cosine", final_lr_ratio=0.0),
    *[Schedule(peak_lr=2e-3, total_steps=90, warmup_steps=9, kind="wsd", decay_steps=31, decay_shape=s,
               final_lr_ratio=r) for s in ("linear", "cosine", "1-sqrt") for r in (0.0, 0.3)],
    Schedule(peak_lr=1e-3, total_steps=40, warmup_steps=5, kind="constant").branch(20, 13, "1-sqrt", 0.1),
]


def _transformers_factor(s: Schedule):
    """transformers' own multiplier function for the same schedule (what training used before)."""
    from transformers import optimization as o
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    if s.kind == "constant":
        sched = o.get_constant_schedule_with_warmup(dummy, s.warmup_steps)
    elif s.kind == "cosine":
        sched = o.get_cosine_with_min_lr_schedule_with_warmup(dummy, s.warmup_steps, s.total_steps,
                                                              min_lr_rate=s.final_lr_ratio)
    else:
        start = s.decay_start if s.decay_start is not None else s.total_steps - s.decay_steps
        sched = o.get_wsd_schedule(dummy, num_warmup_steps=s.warmup_steps, num_decay_steps=s.decay_steps,
                                   num_stable_steps=start - s.warmup_steps, decay_type=s.decay_shape,
                                   min_lr_ratio=s.final_lr_ratio)
    return sched.lr_lambdas[0]


@pytest.mark.parametrize("s", CASES, ids=lambda s: f"{s.kind}-{s.decay_shape}-{s.final_lr_ratio}-{s.warmup_steps}")
def test_same_floats_as_transformers_at_every_step(s):
    ref = _transformers_factor(s)
    for step in range(s.total_steps + 1):
        assert s.factor(step) == float(ref(step)), step  # exact: the trained weights depend on it


def test_torch_scheduler_sets_the_schedule_lr():
    s = CASES[2]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=s.peak_lr)
    sched = torch_scheduler(s, opt)
    for step in range(1, 20):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(s.lr(step), rel=1e-12)


def test_preset_lr_curve_is_the_schedule_objects():
    pythia = preset_files()["pythia"]
    facts, peak = pythia["schedule"], pythia["models"]["pythia-160m"]["peak_lr"]
    s = preset_schedule(facts, peak)
    assert (s.kind, s.total_steps, s.warmup_steps, s.final_lr_ratio) == ("cosine", 143000, 1430, 0.1)
    for step in (0, 1, 512, 1430, 5000, 71715, 143000):
        assert lr_at(facts, peak, step) == (s.lr(step), s.phase(step))
    # by hand: warmup is linear to the peak over 1 % of 143000 steps; the cosine ends at 10 % of the peak
    assert lr_at(facts, peak, 715)[0] == pytest.approx(6e-4 * 715 / 1430)
    assert lr_at(facts, peak, 143000)[0] == pytest.approx(6e-5)
    mid = 1430 + (143000 - 1430) // 2
    assert lr_at(facts, peak, mid)[0] == pytest.approx(6e-5 + (6e-4 - 6e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(facts, peak, 200000)[0] == pytest.approx(6e-5)  # past the end: the final LR, not a new rise


def test_preset_wsd_facts_and_unknowns():
    facts = {"kind": "wsd", "warmup_steps": 10, "decay_start": 100, "decay_end": 200, "decay": "1-sqrt"}
    s = preset_schedule(facts, 2.0)
    assert (s.decay_start, s.decay_steps, s.total_steps, s.decay_shape) == (100, 100, 200, "1-sqrt")
    assert lr_at(facts, 2.0, 5) == (pytest.approx(1.0), "warmup")
    assert lr_at(facts, 2.0, 50) == (2.0, "stable")
    assert lr_at(facts, 2.0, 164)[0] == pytest.approx(2.0 * (1 - math.sqrt(0.64)))
    assert lr_at(facts, 2.0, 300) == (0.0, "decay")
    assert lr_at(facts, None, 5) == (None, None)  # no peak LR: nothing derived
    assert lr_at({"kind": "wsd", "decay": "1-sqrt"}, 1.0, 5) == (None, None)  # cooldown start not encoded
    assert lr_at({"kind": "stages"}, 1.0, 5) == (None, None)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown schedule kind 'step'"):
        Schedule(peak_lr=1.0, total_steps=10, kind="step")
