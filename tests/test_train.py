"""Training: manifest facts, offline-loadable checkpoints, and exact resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qrobust.config import TrainConfig, parse_config
from qrobust.errors import ConfigError
from qrobust.training.loop import train
from qrobust.trajectory import load_trajectory

from conftest import tiny_config


class Killed(Exception):
    pass


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for f in sorted(run.glob("checkpoints/*/step-*/model.safetensors")):
        out[str(f.parent.relative_to(run))] = load_file(str(f))
    for f in sorted(run.glob("checkpoints/*/step-*/optimizer.safetensors")):
        out[str(f.parent.relative_to(run)) + "/opt"] = load_file(str(f))
    return out


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb) and wa
    for k in wa:
        for t in wa[k]:
            assert torch.equal(wa[k][t], wb[k][t]), (k, t)


def test_manifest_lists_every_checkpoint_with_step_tokens_lr_phase(tiny_run):
    traj = load_trajectory(tiny_run)
    got = {(c.run, c.step): c for c in traj}
    assert sorted(got) == [("decay8", 12), ("main", 4), ("main", 8), ("main", 12)]
    for c in traj:
        assert c.tokens == c.step * 4 * 32  # batch 4 x seq_len 32
        assert Path(c.path).is_dir()
    assert got[("main", 8)].lr == pytest.approx(3e-3) and got[("main", 8)].phase == "stable"
    b = got[("decay8", 12)]
    # last update was step 11: linear decay from step 8 over 4 steps -> factor 1 - 3/4
    assert b.lr == pytest.approx(3e-3 * 0.25) and b.phase == "decay"
    assert b.parent == "main" and b.parent_step == 8
    assert traj.runs["decay8"]["from_step"] == 8
    assert traj.data["seq_len"] == 32


def test_checkpoint_loads_offline_with_auto_classes(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ck = tiny_run / "checkpoints" / "main" / "step-0000004"
    tok = AutoTokenizer.from_pretrained(str(ck), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(ck), local_files_only=True)
    ids = tok("def f(x):\n    return x", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "def f(x):\n    return x"
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    assert not list(ck.glob("*.bin")) and not list(ck.glob("*.pt"))  # no pickle anywhere


@pytest.mark.parametrize("kill_at", [("main", 6), ("decay8", 10)])
def test_resume_after_interrupt_gives_identical_weights(tiny_run, tmp_path, kill_at):
    cfg = parse_config(TrainConfig, tiny_config(tmp_path / "run"))

    def hook(run: str, step: int) -> None:
        if (run, step) == kill_at:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, progress=False, on_step=hook)
    train(cfg, progress=False)
    _assert_same(tiny_run, tmp_path / "run")
    steps_a = [json.loads(x)["loss"] for x in (tiny_run / "logs" / "main.jsonl").read_text().splitlines()]
    steps_b = [json.loads(x)["loss"] for x in (tmp_path / "run" / "logs" / "main.jsonl").read_text().splitlines()]
    assert steps_a == steps_b


def test_resume_after_sigkill(tiny_run, tmp_path):
    """A real kill -9 while training (slowed by a sleeping hook), then a resume: identical weights."""
    out = tmp_path / "run"
    cfg = tiny_config(out)
    script = (
        "import json,sys,time\n"
        "from qrobust.config import TrainConfig, parse_config\n"
        "from qrobust.training.loop import train\n"
        f"cfg = parse_config(TrainConfig, json.loads({json.dumps(json.dumps(cfg))}))\n"
        "train(cfg, progress=False, on_step=lambda r, s: time.sleep(0.3))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "main" / "step-0000004" / "qrobust_state.json").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "checkpoints" / "decay8").exists()
    train(parse_config(TrainConfig, cfg), progress=False)
    _assert_same(tiny_run, out)


def test_different_config_in_same_folder_is_refused(tiny_run):
    cfg = parse_config(TrainConfig, tiny_config(tiny_run, seed=1))
    with pytest.raises(ConfigError, match="different config"):
        train(cfg, progress=False)


def test_branch_must_start_in_stable_phase(tmp_path):
    cfg = parse_config(TrainConfig, tiny_config(tmp_path / "r", schedule={"kind": "cosine", "warmup_steps": 2}))
    with pytest.raises(ConfigError, match="stable phase"):
        train(cfg, progress=False)


def test_branch_from_step_must_be_a_checkpoint():
    with pytest.raises(ConfigError, match="not a checkpoint step"):
        parse_config(TrainConfig, tiny_config(Path("x"), branches=[{"from_step": 6, "decay_steps": 2}]))


def test_llama_trajectory_trains_and_loads(tmp_path):
    from qrobust.models import load_checkpoint
    cfg = parse_config(TrainConfig, tiny_config(tmp_path / "llama", steps=4, branches=[],
                                                model={"arch": "llama", "preset": "micro"}))
    traj = train(cfg, progress=False)
    assert [c.step for c in traj] == [4]
    m = load_checkpoint(traj.checkpoints[0].path)
    assert m.config.model_type == "llama"


def test_wsd_main_run_phases_in_manifest(tmp_path):
    cfg = parse_config(TrainConfig, tiny_config(tmp_path / "wsd", steps=8, branches=[],
                                                schedule={"kind": "wsd", "warmup_steps": 2, "decay_steps": 4}))
    traj = train(cfg, progress=False)
    got = {c.step: (c.phase, c.lr) for c in traj}
    assert got[4][0] == "stable" and got[4][1] == pytest.approx(3e-3)  # last update at step 3 < decay start 4
    assert got[8][0] == "decay" and got[8][1] == pytest.approx(3e-3 * 0.25)  # step 7: 1 - 3/4
