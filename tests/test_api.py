"""The README's Python API example, on the tiny trajectory."""
from __future__ import annotations

import pytest

import qrobust
from qrobust.errors import ConfigError

from conftest import tiny_config


def test_readme_api_flow(tiny_run, tmp_path):
    # train: a config dict plus keyword overrides; a finished run resumes instantly (same checkpoints)
    traj = qrobust.train(tiny_config(tiny_run), progress=False)
    assert [c.step for c in traj if c.run == "main"] == [4, 8, 12]
    last = traj.checkpoints[-1].path
    model = qrobust.load_checkpoint(last)
    blocks = qrobust.eval_blocks(last, n_blocks=4)
    assert tuple(blocks.shape) == (4, 32)
    fp = qrobust.evaluate_loss(model, blocks)
    qmodel, res = qrobust.quantize(model, method="rtn", bits=3, group_size=16, calibration=None)
    q = qrobust.evaluate_loss(qmodel, blocks)
    with qrobust.quantized(model, qrobust.QuantSpec(bits=3, group_size=16)):
        inplace = qrobust.evaluate_loss(model, blocks)
    assert inplace.loss == q.loss
    assert qrobust.evaluate_loss(model, blocks).loss == fp.loss
    assert res.summary()["n_layers"] == 8
    run = qrobust.stream_checkpoint(last, [qrobust.QuantSpec(bits=3, group_size=16)], blocks, states="disk")
    assert run.fp.loss == fp.loss and run.variants[0].q.loss == q.loss and run.tier == "disk"
    s = qrobust.sweep({"trajectory": str(tiny_run), "out": str(tmp_path / "res"), "bits": [3],
                       "group_sizes": [16], "eval": {"n_blocks": 4}}, progress=False)
    assert s.records_written == 4
    html = qrobust.report(tmp_path / "res")
    assert html.is_file() and html.name == "index.html"
    geo = qrobust.sharpness(last, top_k=2, iters=6, trace_matvecs=6, n_blocks=1, params=["linear"])
    assert len(geo["eigen"]["values"]) == 2 and "trace" in geo and "weights" in geo
    land = qrobust.landscape(str(tiny_run), tmp_path / "land", grid=3, n_blocks=1, progress=False)
    assert len(land["landscape"]["loss"]) == 3
    from qrobust.results.store import Store
    recs = Store(tmp_path / "res").records()
    cmp = qrobust.compare_dq(recs[0], recs[1])
    assert cmp["paired"] and cmp["low"] <= cmp["diff"] <= cmp["high"]


def test_train_kwargs_override_and_bad_keys_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        qrobust.train(tiny_config(tmp_path / "r"), progress=False, stepz=3)


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        qrobust.no_such_thing  # noqa: B018


def test_api_functions_are_not_shadowed_by_subpackages():
    import qrobust.reporting.figures  # noqa: F401
    import qrobust.sweeps.run  # noqa: F401
    import qrobust.training.loop  # noqa: F401
    import qrobust.workflows.landscape  # noqa: F401
    import qrobust.averaging.run  # noqa: F401
    import qrobust.stats  # noqa: F401
    import qrobust.workflows.reproduction.run  # noqa: F401
    for name in ("train", "sweep", "report", "quantize", "evaluate_loss", "sharpness", "landscape", "average",
                 "compare_dq", "dq_interval", "reproduce", "export"):
        assert callable(getattr(qrobust, name)), name
