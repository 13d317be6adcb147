"""The monitor inside qrobust's training loop: the trajectory is bit-identical with it on, its values equal a
sweep's records of the same checkpoints, a killed and resumed run logs and alerts as an uninterrupted one,
refusals come before anything is written, and a 2-process DDP run (rank 0 evaluates) agrees with one process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import tiny_config
from qrobust.config import TrainConfig, parse_config
from qrobust.errors import ConfigError
from qrobust.training.loop import train

REPO = Path(__file__).resolve().parents[1]
MONITOR = {"every": 4, "n_blocks": 6, "batch_size": 4, "bits": [3, 4], "group_size": 16, "gptq_every": 2,
           "calib_samples": 4, "n_boot": 200, "alerts": [{"metric": "dq/rtn-w3g16", "rise_pct": 1, "window": 1}]}
TIMING = ("tokens_per_s", "mfu", "monitor/seconds")


def _lines(out: Path, run: str = "main") -> list[dict]:
    return [json.loads(ln) for ln in (out / "logs" / f"{run}.jsonl").read_text().splitlines()]


def _untimed(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in ln.items() if k not in TIMING} for ln in lines]


def _train(cfg: dict, on_step=None) -> list[str]:
    """Train; the warning lines it emitted."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        train(parse_config(TrainConfig, cfg), progress=False, on_step=on_step)
    return [str(w.message) for w in got if str(w.message).startswith("monitor:")]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("monitored") / "run"
    return out, _train(tiny_config(out, monitor=MONITOR))


def test_trajectory_is_bit_identical_with_the_monitor_on(tiny_run, monitored):
    out, _ = monitored
    folders = sorted(p.relative_to(tiny_run) for p in (tiny_run / "checkpoints").glob("*/step-*"))
    assert len(folders) == 4  # main 4, 8, 12 and the branch's 12
    for f in folders:
        for file in ("model.safetensors", "optimizer.safetensors"):
            a, b = load_file(str(tiny_run / f / file)), load_file(str(out / f / file))
            assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), (f, file)
    for run in ("main", "decay8"):
        ref, got = _lines(tiny_run, run), _lines(out, run)
        train_lines = [ln for ln in got if "loss" in ln]
        assert _untimed(train_lines) == _untimed(ref)
        steps = [ln["step"] for ln in got if "monitor/loss_fp" in ln]
        assert steps == ([4, 8, 12] if run == "main" else [12])
        # each monitor line follows its step's training line
        assert all(got[i - 1].get("step") == got[i]["step"] and "loss" in got[i - 1]
                   for i, ln in enumerate(got) if "monitor/loss_fp" in ln)
    assert json.loads((out / "train_config.json").read_text())["monitor"]["every"] == 4


def test_monitor_values_equal_a_sweeps_records(monitored, tmp_path):
    from qrobust.results.store import Store
    from qrobust.sweeps import sweep
    out, _ = monitored
    res = tmp_path / "res"
    sweep({"trajectory": str(out), "out": str(res), "methods": ["rtn", "gptq"], "bits": [3], "group_sizes": [16],
           "eval": {"n_blocks": 6, "batch_size": 4}, "calibration": {"n_samples": 4}}, progress=False)
    logged = {(run, ln["step"]): ln for run in ("main", "decay8") for ln in _lines(out, run) if "monitor/loss_fp" in ln}
    compared = 0
    for r in Store(res).records():
        d = r.to_dict()
        v, m = d["variant"], d["metrics"]
        label = f"{v['method']}-w{v['bits']}g{v['group_size']}"
        ln = logged.get((d["checkpoint"]["run"], d["checkpoint"]["step"]))
        if ln is None or f"monitor/dq/{label}" not in ln:
            continue
        assert ln["monitor/loss_fp"] == m["loss_fp"] and ln[f"monitor/loss_q/{label}"] == m["loss_q"]
        assert ln[f"monitor/dq/{label}"] == m["dq_rel"]
        # the sweep bootstraps 2000 times, the monitor n_boot=200: same seed, the first 200 resamples shared
        assert ln[f"monitor/dq_low/{label}"] == pytest.approx(m["dq_ci"]["low"], abs=3 * m["dq_ci"]["se"])
        compared += 1
    assert compared == 4 + 1  # RTN 3-bit at 4 checkpoints, GPTQ 3-bit at main step 8 (its 2nd evaluation)


def test_killed_and_resumed_run_logs_and_alerts_as_the_uninterrupted_one(monitored, tmp_path):
    out, warned = monitored
    cut = tmp_path / "cut"

    class Stop(Exception):
        pass

    def stop(run: str, step: int) -> None:
        if (run, step) == ("main", 8):
            raise Stop

    with pytest.raises(Stop):
        _train(tiny_config(cut, monitor=MONITOR), on_step=stop)
    warned_again = _train(tiny_config(cut, monitor=MONITOR))
    for run in ("main", "decay8"):
        assert _untimed(_lines(cut, run)) == _untimed(_lines(out, run))
    alerts = [ln for ln in _lines(out) if "monitor/alert/dq/rtn-w3g16" in ln]
    assert [ln["step"] for ln in alerts] == [12]  # -9.6e-5 -> 1.07e-4: a rise only an old value explains
    assert alerts[0]["monitor/alert/dq/rtn-w3g16"] == pytest.approx(
        (alerts[0]["monitor/dq/rtn-w3g16"] - _lines(out)[9]["monitor/dq/rtn-w3g16"])
        / abs(_lines(out)[9]["monitor/dq/rtn-w3g16"]))
    main_alerts = [w for w in warned if "at step 12" in w]
    assert main_alerts and [w for w in warned_again if w in main_alerts] == main_alerts


@pytest.mark.parametrize("monitor, what", [
    ({"group_size": 64, "n_blocks": 4}, "does not fit layer 'gpt_neox.layers.0.attention.query_key_value'"),
    ({"group_size": 16, "n_blocks": 10**5}, "but the validation split holds only"),
    ({"group_size": 16, "n_blocks": 4, "gptq_every": 1, "calib_samples": 10**6}, "too few tokens"),
    ({"group_size": 16, "n_blocks": 4, "predictors": ["nope"]}, "nope"),
])
def test_refused_at_startup_before_anything_is_written(tmp_path, monitor, what):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=what) as e:
        train(parse_config(TrainConfig, tiny_config(out, monitor=monitor)), progress=False)
    assert "\n" not in str(e.value)
    assert not (out / "train_config.json").exists() and not (out / "checkpoints").exists()


def _dist_cfg(out: Path, monitor: dict | None) -> dict:
    cfg = {"name": "dist", "out": str(out), "seed": 0, "steps": 10, "batch_size": 8, "checkpoint_every": 5,
           "threads": 1, "data": {"corpus": "builtin", "max_chars": 200_000, "seq_len": 32, "tokenizer": "byte"},
           "model": {"arch": "llama", "preset": "micro"}, "schedule": {"kind": "constant", "warmup_steps": 5}}
    return {**cfg, "monitor": monitor} if monitor else cfg


def _launch(tmp: Path, cfg: dict) -> None:
    import os
    f = tmp / f"{Path(cfg['out']).name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "qrobust", "train", str(f), "--nproc", "2", "--quiet"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_ddp_rank0_monitor_equals_one_process_and_leaves_the_trajectory(tmp_path):
    """Two gloo processes (DDP): rank 0 evaluates its replica; the other waits at the barrier."""
    import torch
    mon = {"every": 5, "n_blocks": 4, "batch_size": 4, "bits": [3], "group_size": 16, "n_boot": 100}
    n = torch.get_num_threads()
    try:
        train(parse_config(TrainConfig, _dist_cfg(tmp_path / "one", mon)), progress=False)
    finally:
        torch.set_num_threads(n)
    _launch(tmp_path, _dist_cfg(tmp_path / "ddp_on", mon))
    _launch(tmp_path, _dist_cfg(tmp_path / "ddp_off", None))
    on, off, one = _lines(tmp_path / "ddp_on"), _lines(tmp_path / "ddp_off"), _lines(tmp_path / "one")
    assert _untimed([ln for ln in on if "loss" in ln]) == _untimed(off)
    for step in (5, 10):
        a = load_file(str(tmp_path / "ddp_on" / "checkpoints" / "main" / f"step-{step:07d}" / "model.safetensors"))
        b = load_file(str(tmp_path / "ddp_off" / "checkpoints" / "main" / f"step-{step:07d}" / "model.safetensors"))
        assert all(a[k].equal(b[k]) for k in a)
    m_on = [ln for ln in on if "monitor/loss_fp" in ln]
    m_one = [ln for ln in one if "monitor/loss_fp" in ln]
    assert [ln["step"] for ln in m_on] == [ln["step"] for ln in m_one] == [5, 10]
    for a, b in zip(m_on, m_one):  # the FP loss is smooth in the weights, which differ by float noise only
        assert a["monitor/loss_fp"] == pytest.approx(b["monitor/loss_fp"], rel=1e-6)
    # RTN is not smooth (a weight on a rounding boundary flips under 1e-7 noise), so its values are checked
    # against rank 0's own weights: the DDP run's checkpoint, evaluated offline by a monitor with the same blocks
    from qrobust.config import MonitorConfig
    from qrobust.data.tokenizer import load_tokenizer
    from qrobust.models import load_checkpoint
    from qrobust.monitor import Monitor
    ck = tmp_path / "ddp_on" / "checkpoints" / "main"
    cfg = parse_config(TrainConfig, _dist_cfg(tmp_path / "x", mon))
    torch.set_num_threads(1)
    try:
        for ln in m_on:
            folder = ck / f"step-{ln['step']:07d}"
            offline = Monitor.for_training(cfg.monitor, cfg.data, load_tokenizer(folder), "fp")
            got = offline.evaluate(load_checkpoint(folder), ln["step"]).metrics
            for k in ("monitor/loss_fp", "monitor/loss_q/rtn-w3g16", "monitor/dq/rtn-w3g16",
                      "monitor/dq_low/rtn-w3g16", "monitor/dq_high/rtn-w3g16"):
                assert ln[k] == pytest.approx(got[k], rel=1e-9, abs=1e-12), k
    finally:
        torch.set_num_threads(n)
    shutil.rmtree(tmp_path / "ddp_off", ignore_errors=True)
