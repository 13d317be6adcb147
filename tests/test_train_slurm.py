"""``qrobust train CFG --emit-slurm FILE``: an sbatch script with one torchrun per node meeting at the first
node; checked before it is written, written atomically."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import yaml

from qrobust.cli import main
from qrobust.errors import ConfigError
from qrobust.training.slurm import SlurmOptions, sbatch_lines

CFG = dict(name="big", steps=10, batch_size=64, checkpoint_every=5, data=dict(tokenizer="byte", seq_len=32),
           model=dict(preset="micro"))


@pytest.fixture
def cfg(tmp_path) -> Path:
    p = tmp_path / "big.yaml"
    p.write_text(yaml.safe_dump({**CFG, "out": str(tmp_path / "run")}))
    return p


def test_script_content(cfg, tmp_path, capsys):
    script = tmp_path / "jobs" / "train.sbatch"
    assert main(["train", str(cfg), "--emit-slurm", str(script), "--nodes", "4", "--gpus-per-node", "8",
                 "--time", "2-00:00:00", "--partition", "gpu", "--account", "proj1", "--slurm-opt", "mem=0",
                 "--out", str(tmp_path / "elsewhere")]) == 0
    assert f"sbatch {script}" in capsys.readouterr().out
    text = script.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    header = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert header == ["#SBATCH --job-name=qrobust-train-big", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
                      "#SBATCH --gpus-per-node=8", "#SBATCH --output=qrobust-train-big-%j.log",
                      "#SBATCH --cpus-per-task=64", "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj1",
                      "#SBATCH --mem=0"]
    assert "set -euo pipefail" in lines
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in lines
    run = shlex.split(lines[-1])
    assert run[:2] == ["srun", "torchrun"]
    flags = dict(zip(run[2:14:2], run[3:14:2]))
    assert flags == {"--nnodes": "$SLURM_NNODES", "--nproc-per-node": "8", "--rdzv-id": "$SLURM_JOB_ID",
                     "--rdzv-backend": "c10d", "--rdzv-endpoint": "$head_node:29500", "-m": "qrobust"}
    assert run[14:] == ["train", str(cfg.resolve()), "--quiet", "--out", str((tmp_path / "elsewhere").resolve())]
    assert os.access(script, os.X_OK)
    assert [p.name for p in script.parent.iterdir()] == ["train.sbatch"]  # no temporary file left
    assert not (tmp_path / "run").exists() and not (tmp_path / "elsewhere").exists()  # nothing trained


def test_defaults_one_node_one_gpu(cfg, tmp_path):
    script = tmp_path / "t.sh"
    assert main(["train", str(cfg), "--emit-slurm", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --nodes=1" in text and "--nproc-per-node 1" in text
    assert "--time" not in text and "--partition" not in text and "--account" not in text
    assert "#SBATCH --cpus-per-task=8" in text


def test_cpus_per_task_can_be_replaced():
    lines = sbatch_lines("x", SlurmOptions(gpus_per_node=4, extra=("cpus-per-task=48",)))
    assert [ln for ln in lines if "cpus-per-task" in ln] == ["#SBATCH --cpus-per-task=48"]


def test_batch_that_does_not_divide_writes_nothing(cfg, tmp_path, capsys):
    script = tmp_path / "t.sh"
    assert main(["train", str(cfg), "--emit-slurm", str(script), "--nodes", "3", "--gpus-per-node", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not divide over 6 processes" in err
    assert not script.exists()


@pytest.mark.parametrize("time", ["90", "30:00", "12:00:00", "1-12", "1-12:30", "1-12:30:00"])
def test_slurm_times(time):
    assert f"#SBATCH --time={time}" in sbatch_lines("x", SlurmOptions(time=time))


@pytest.mark.parametrize("options,match", [(SlurmOptions(time="2 days"), "Slurm time"),
                                           (SlurmOptions(extra=("mem",)), "KEY=VALUE"),
                                           (SlurmOptions(nodes=0), "at least 1")])
def test_bad_options_are_one_error(options, match):
    with pytest.raises(ConfigError, match=match):
        sbatch_lines("x", options)
