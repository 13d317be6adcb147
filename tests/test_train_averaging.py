"""Averaging inside ``qrobust train``: EMA per step and LAWA over snapshots, checked against means of the
raw per-step weights of an identical run; exact resume (averaging state in the checkpoint) and branches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from qrobust.config import TrainConfig, parse_config
from qrobust.errors import ConfigError
from qrobust.training.loop import train


class Killed(Exception):
    pass


def _w(out: Path, run: str, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / run / f"step-{step:07d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def per_step(tmp_path_factory) -> Path:
    """The same training as below, with a raw checkpoint after every step: θ_1 .. θ_8."""
    out = tmp_path_factory.mktemp("per_step")
    train(parse_config(TrainConfig, tiny_config(out, steps=8, checkpoint_every=1, branches=[])), progress=False)
    return out


def _averaging_cfg(out: Path, **over) -> TrainConfig:
    kw = {"steps": 8, "checkpoint_every": 4, "branches": [], **over}
    return parse_config(TrainConfig, tiny_config(out, averaging=[
        {"kind": "ema", "beta": 0.5}, {"kind": "lawa", "window": 2, "every": 2}], **kw))


def test_ema_and_lawa_match_means_of_the_raw_weights(per_step, tmp_path):
    out = tmp_path / "avg"
    traj = train(_averaging_cfg(out), progress=False)
    theta = {s: _w(per_step, "main", s) for s in range(1, 9)}
    raw8 = _w(out, "main", 8)
    assert all(torch.equal(raw8[k], theta[8][k]) for k in raw8)  # averaging does not touch training
    for step in (4, 8):
        ema = _w(out, "main-ema0.5", step)
        lawa = _w(out, "main-lawa2e2", step)
        norm = 1 - 0.5 ** step  # debiased: Σ (1-β) β^(t-i) θ_i / (1 - β^t)
        for k in ema:
            ref = sum(0.5 * 0.5 ** (step - i) * theta[i][k].double() for i in range(1, step + 1)) / norm
            assert torch.allclose(ema[k].double(), ref, atol=1e-6), k
            ref = (theta[step - 2][k].double() + theta[step][k].double()) / 2
            assert torch.allclose(lawa[k].double(), ref, atol=1e-6), k
    runs = {c.run for c in traj}
    assert runs == {"main", "main-ema0.5", "main-lawa2e2"}
    assert traj.runs["main-lawa2e2"]["averaged"] == {"averager": "train-lawa", "window": 2, "every": 2}
    assert traj.runs["main-ema0.5"]["parent"] == "main"


def test_lawa_waits_for_a_full_window(tmp_path):
    cfg = parse_config(TrainConfig, tiny_config(tmp_path, steps=8, checkpoint_every=2, branches=[],
                                                averaging=[{"kind": "lawa", "window": 3}]))
    traj = train(cfg, progress=False)
    assert [c.step for c in traj if c.run == "main-lawa3"] == [6, 8]


def test_resume_and_branches_continue_the_averages_exactly(tmp_path):
    branch = [{"from_step": 4, "decay_steps": 4}]
    ref = tmp_path / "ref"
    train(_averaging_cfg(ref, branches=branch), progress=False)
    for kill_at in (("main", 6), ("decay4", 7)):
        out = tmp_path / f"killed-{kill_at[0]}"

        def hook(run: str, step: int) -> None:
            if (run, step) == kill_at:
                raise Killed

        with pytest.raises(Killed):
            train(_averaging_cfg(out, branches=branch), progress=False, on_step=hook)
        traj = train(_averaging_cfg(out, branches=branch), progress=False)
        for c in traj:
            a, b = _w(ref, c.run, c.step), _w(out, c.run, c.step)
            assert all(torch.equal(a[k], b[k]) for k in a), (kill_at, c.name)
    names = sorted({c.run for c in traj})
    assert names == ["decay4", "decay4-ema0.5", "decay4-lawa2e2", "main", "main-ema0.5", "main-lawa2e2"]


def test_averaging_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="distinct names"):
        parse_config(TrainConfig, tiny_config(tmp_path, averaging=[{"kind": "ema"}, {"kind": "ema"}]))
    with pytest.raises(ConfigError, match="averaging.0.beta"):
        parse_config(TrainConfig, tiny_config(tmp_path, averaging=[{"kind": "ema", "beta": 1.0}]))
    out = tmp_path / "plain"
    train(parse_config(TrainConfig, tiny_config(out, steps=4, branches=[])), progress=False)
    with pytest.raises(ConfigError, match="differs in: averaging"):
        train(parse_config(TrainConfig, tiny_config(out, steps=4, branches=[], averaging=[{"kind": "ema"}])),
              progress=False)


def test_training_state_files_are_not_weights(per_step, tmp_path):
    """averaging.safetensors beside the weights is neither averaged nor part of a checkpoint's identity."""
    from qrobust.averaging import weighted_mean
    from qrobust.sweeps.plan import checkpoint_identity
    from qrobust.trajectory import load_trajectory
    out = tmp_path / "avg"
    train(_averaging_cfg(out), progress=False)
    raw = out / "checkpoints" / "main" / "step-0000004"
    assert (raw / "averaging.safetensors").is_file()
    got = weighted_mean([raw, per_step / "checkpoints" / "main" / "step-0000004"], [0.5, 0.5])
    assert set(got) == set(_w(out, "main", 4))
    mine, theirs = (next(c for c in load_trajectory(o) if c.name == "main/step-0000004") for o in (out, per_step))
    assert checkpoint_identity(mine) == checkpoint_identity(theirs)  # same weights: sweep records are shared
