"""Training beyond one fp32 process: gradient accumulation, torchrun DDP / FSDP2 on CPU (gloo), a killed rank,
resume with another world size, bf16 autocast, fp32 masters under save_dtype, and the refusals.

References are independent runs: the single-process loop (one micro batch, fp32) is the path every verified
number comes from. The model is Llama-shaped (no biases): GPT-NeoX's attention key bias has an exactly zero
true gradient (softmax ignores a shift), so AdamW turns float noise in it into O(1e-5) weight differences,
as large between 1 and 2 threads of one process as between 1 and 2 processes (README says so).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import qrobust
from qrobust.cli import main

REPO = Path(__file__).resolve().parents[1]


def _cfg(out: Path, **over) -> dict:
    base = {"name": "dist", "out": str(out), "seed": 0, "steps": 20, "batch_size": 8, "checkpoint_every": 10,
            "data": {"corpus": "builtin", "max_chars": 200_000, "seq_len": 32, "tokenizer": "byte"},
            "model": {"arch": "llama", "preset": "micro"}, "schedule": {"kind": "constant", "warmup_steps": 5}}
    return {**base, **over}


def _write(tmp: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _weights(out: Path, step: int, run: str = "main", file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / run / f"step-{step:07d}" / file))


def _losses(out: Path, run: str = "main") -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "logs" / f"{run}.jsonl").read_text().splitlines()]


class _Stop(Exception):
    pass


def _train_until(cfg: dict, step: int) -> None:
    """Train ``cfg`` and stop it after the checkpoint of ``step`` (as a kill there would)."""
    from qrobust.config import TrainConfig
    from qrobust.training.loop import train

    def stop(run: str, at: int) -> None:
        if at == step:
            raise _Stop
    with pytest.raises(_Stop):
        train(TrainConfig.model_validate(cfg), progress=False, on_step=stop)


def _max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def _max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _launch(cfg_file: Path, nproc: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "qrobust", "train", str(cfg_file), "--nproc", str(nproc), "--quiet",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(cfg_file: Path, nproc: int) -> None:
    proc = _launch(cfg_file, nproc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("trained 'dist'") == 1  # the launcher reports once, the workers not at all


@pytest.fixture(autouse=True, scope="module")
def _keep_threads():
    """``threads: 1`` (as each torchrun worker runs) must not slow the rest of the suite."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def single(tmp_path_factory, _keep_threads) -> Path:
    """The reference: one process, one micro batch of 8, fp32, 1 thread (as each torchrun worker)."""
    out = tmp_path_factory.mktemp("single") / "run"
    qrobust.train(_cfg(out, threads=1), progress=False)
    return out


def test_grad_accum_equals_the_full_batch(single, tmp_path):
    """micro 2 × accum 4 is batch 8: the mean of the micro losses' gradients is the batch gradient."""
    out = tmp_path / "acc"
    qrobust.train(_cfg(out, threads=1, micro_batch_size=2, grad_accum=4), progress=False)
    assert _max_rel(_losses(out), _losses(single)) < 1e-6
    assert _max_abs(_weights(out, 20), _weights(single, 20)) < 1e-6
    line = json.loads((out / "logs" / "main.jsonl").read_text().splitlines()[-1])
    assert line["tokens"] == 20 * 8 * 32 and line["grad_norm"] > 0


def test_resume_with_another_micro_layout(single, tmp_path):
    """The global batch is what resume keeps; the micro/accum split may change half-way."""
    out = tmp_path / "re"
    _train_until(_cfg(out, threads=1), 10)
    qrobust.train(_cfg(out, threads=1, micro_batch_size=2), progress=False)
    assert _max_abs(_weights(out, 20), _weights(single, 20)) < 1e-6


def test_save_dtype_keeps_fp32_masters(single, tmp_path):
    """Weights written in bf16; resume continues from the fp32 masters, so the run equals the fp32-saved one."""
    out = tmp_path / "bf16save"
    _train_until(_cfg(out, threads=1, save_dtype="bfloat16"), 10)
    qrobust.train(_cfg(out, threads=1, save_dtype="bfloat16"), progress=False)
    w = _weights(out, 20)
    assert {t.dtype for t in w.values()} == {torch.bfloat16}
    masters = _weights(out, 20, file="master_weights.safetensors")
    ref = _weights(single, 20)
    assert all(torch.equal(masters[k], ref[k]) for k in ref)
    assert all(torch.equal(w[k], ref[k].to(torch.bfloat16)) for k in ref)
    loaded = qrobust.load_checkpoint(out / "checkpoints" / "main" / "step-0000020")
    assert next(loaded.parameters()).dtype == torch.float32  # readers get fp32 by default


def test_bf16_mixed_trains_like_fp32(single, tmp_path):
    """Autocast to bf16 on CPU: every step's loss within 1 % of fp32's, masters and AdamW state stay fp32."""
    out = tmp_path / "bf16"
    qrobust.train(_cfg(out, threads=1, precision="bf16-mixed"), progress=False)
    assert _max_rel(_losses(out), _losses(single)) < 0.01
    assert {t.dtype for t in _weights(out, 20).values()} == {torch.float32}
    assert {t.dtype for t in _weights(out, 20, file="optimizer.safetensors").values()} == {torch.float32}


def test_ddp_two_processes_equal_one(single, tmp_path):
    """2 gloo processes × 4 samples = 1 process × 8: per-step loss and final weights within 1e-6."""
    out = tmp_path / "ddp"
    _run(_write(tmp_path, _cfg(out)), 2)
    assert _max_rel(_losses(out), _losses(single)) < 1e-6
    assert _max_abs(_weights(out, 20), _weights(single, 20)) < 1e-6
    assert _max_abs(_weights(out, 20, file="optimizer.safetensors"),
                    _weights(single, 20, file="optimizer.safetensors")) < 1e-6


def test_fsdp_two_processes_equal_one_and_write_whole_checkpoints(single, tmp_path):
    """FSDP2 shards weights and AdamW state over 2 ranks; the checkpoint is gathered whole, same layout as one
    process's (same tensor names and shapes), and resumes on one process."""
    out = tmp_path / "fsdp"
    _run(_write(tmp_path, _cfg(out, distributed="fsdp", averaging=[{"kind": "ema", "beta": 0.9}])), 2)
    ref_opt = _weights(single, 20, file="optimizer.safetensors")
    opt = _weights(out, 20, file="optimizer.safetensors")
    assert {k: v.shape for k, v in opt.items()} == {k: v.shape for k, v in ref_opt.items()}
    assert _max_rel(_losses(out), _losses(single)) < 1e-6
    assert _max_abs(_weights(out, 20), _weights(single, 20)) < 1e-6
    assert (out / "checkpoints" / "main-ema0.9" / "step-0000020" / "model.safetensors").is_file()
    one = tmp_path / "one"  # the FSDP step-10 checkpoint (weights, AdamW and EMA state) resumed by one process
    shutil.copytree(out, one)
    for run in ("main", "main-ema0.9"):
        shutil.rmtree(one / "checkpoints" / run / "step-0000020")
    qrobust.train(_cfg(one, threads=1, averaging=[{"kind": "ema", "beta": 0.9}]), progress=False)
    assert _max_abs(_weights(one, 20), _weights(out, 20)) < 1e-6
    assert _max_abs(_weights(one, 20, "main-ema0.9"), _weights(out, 20, "main-ema0.9")) < 1e-6


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_killed_rank_resumes_bit_identical_and_on_one_process(tmp_path):
    """kill -9 rank 1 after the step-10 checkpoint: the launcher stops with one line, a re-run finishes
    bit-identical to an uninterrupted 2-process run, and the killed run resumed on 1 process (same global
    batch) ends within 1e-6 of it."""
    cfg = _cfg(tmp_path / "ref", steps=60, model={"arch": "llama", "preset": "tiny"}, data={
        "corpus": "builtin", "max_chars": 300_000, "seq_len": 64, "tokenizer": "byte"})
    _run(_write(tmp_path, cfg, "ref.yaml"), 2)
    ref = tmp_path / "ref"
    out = tmp_path / "killed"
    cfg_file = _write(tmp_path, {**cfg, "out": str(out)}, "killed.yaml")
    proc = _launch(cfg_file, 2)
    first = out / "checkpoints" / "main" / "step-0000010"
    deadline = time.time() + 300
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None and not (out / "checkpoints" / "main" / "step-0000060").exists()
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "error: training stopped: worker rank 1 exited" in err
    one = tmp_path / "one"
    shutil.copytree(out, one)
    _run(cfg_file, 2)
    for step in (10, 20, 30, 40, 50, 60):
        for f in ("model.safetensors", "optimizer.safetensors"):
            a = out / "checkpoints" / "main" / f"step-{step:07d}" / f
            assert a.read_bytes() == (ref / "checkpoints" / "main" / f"step-{step:07d}" / f).read_bytes(), (step, f)
    shutil.rmtree(one / "checkpoints" / "main" / "step-0000020", ignore_errors=True)  # resume from step 10
    for late in (30, 40, 50, 60):
        shutil.rmtree(one / "checkpoints" / "main" / f"step-{late:07d}", ignore_errors=True)
    qrobust.train({**cfg, "out": str(one), "threads": 1, "steps": 60}, progress=False)
    # 10 steps after the resume; later the float differences of 1 vs 2 processes grow as any two summation
    # orders do at this LR (README: 4e-7 at +10 steps, 5e-6 at +20, 4e-3 at +50)
    assert _max_abs(_weights(one, 20), _weights(ref, 20)) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# refusals: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------------
def _fails(capsys, tmp_path, cfg: dict, *args: str, expect: str) -> None:
    out = Path(cfg["out"])
    capsys.readouterr()
    rc = main(["train", str(_write(tmp_path, cfg)), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    assert expect in err, err
    assert not out.exists() or not (out / "checkpoints").exists()


def test_nproc_larger_than_the_cores(capsys, tmp_path):
    _fails(capsys, tmp_path, _cfg(tmp_path / "r", batch_size=100_000), "--nproc", "100000",
           expect="processes per node asked for, but this node has")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_nccl_and_cuda_without_cuda(capsys, tmp_path):
    _fails(capsys, tmp_path, _cfg(tmp_path / "r", backend="nccl"), "--nproc", "2", expect="backend: nccl needs CUDA")
    _fails(capsys, tmp_path, _cfg(tmp_path / "r", device="cuda"), expect="device: cuda asked for")


def test_fp16_on_cpu(capsys, tmp_path):
    _fails(capsys, tmp_path, _cfg(tmp_path / "r", device="cpu", precision="fp16-mixed"),
           expect="precision: fp16-mixed needs a CUDA device")


def test_batch_that_does_not_split(capsys, tmp_path):
    _fails(capsys, tmp_path, _cfg(tmp_path / "r", micro_batch_size=3), expect="batch_size 8 ≠ micro_batch_size 3")
    _fails(capsys, tmp_path, _cfg(tmp_path / "r", batch_size=7), "--nproc", "2",
           expect="is not divisible by the 2 processes")


def test_torchrun_flag_without_nproc(capsys, tmp_path):
    _fails(capsys, tmp_path, _cfg(tmp_path / "r"), "--nnodes", "2", expect="--nnodes is a torchrun flag")


def test_resume_with_another_global_batch(capsys, tmp_path):
    out = tmp_path / "r"
    qrobust.train(_cfg(out, threads=1, steps=2, checkpoint_every=2), progress=False)
    before = sorted(p.name for p in (out / "checkpoints" / "main").iterdir())
    capsys.readouterr()
    rc = main(["train", str(_write(tmp_path, _cfg(out, steps=4, checkpoint_every=2, batch_size=4))), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "global batch_size 8, not 4" in err, err
    assert sorted(p.name for p in (out / "checkpoints" / "main").iterdir()) == before
