"""bench/gpu_check.sh cannot run without a GPU; here: its dry run writes configs that parse at the intended
size (Pythia-70M, cuda, bf16-mixed, compile) and lists every step without running one, bad flags are one
line, and (slow) the whole script runs at toy size on CPU and reports its figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrobust.config import SweepConfig, TrainConfig, load_yaml, parse_config

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_dry_run(tmp_path):
    r = _run("--dry-run", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    train = parse_config(TrainConfig, load_yaml(tmp_path / "train.yaml"))
    assert (train.model.preset, train.device, train.precision, train.compile) == ("pythia-70m", "cuda",
                                                                                  "bf16-mixed", True)
    assert train.steps == 300 and train.checkpoint_every == 100
    sweep = parse_config(SweepConfig, load_yaml(tmp_path / "sweep.yaml"))
    assert (sweep.methods, sweep.device, sweep.trajectory) == (["gptq"], "cuda", str(tmp_path / "run"))
    steps = [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("== ")]
    assert steps == ["== train", "== sweep", "== eval", "== report"]
    assert "--method gptq --bits 4 --group-size 128 --stream --device cuda" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml", "train.yaml"]  # nothing ran


def test_bad_flags_are_one_line(tmp_path):
    for args in (["--frobnicate"], ["--steps", "zero"]):
        r = _run("--dry-run", "--out", str(tmp_path), *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("gpu_check:")


@pytest.mark.slow
def test_whole_script_on_cpu_at_toy_size(tmp_path):
    r = _run("--cpu", "--steps", "3", "--out", str(tmp_path / "work"), "--json", str(tmp_path / "figures.json"))
    assert r.returncode == 0, r.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["device"] == "cpu" and figures["mfu"] is None and figures["train_tokens_per_s"] > 0
    assert figures["gptq_seconds_per_block"] > 0
    assert "tokens/s" in r.stdout and "s per block" in r.stdout
