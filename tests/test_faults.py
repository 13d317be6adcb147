"""Faults that used to end in a traceback or a silent hang: a disk that fills while a checkpoint is written,
a batch that cannot fit in memory, and a YAML file with a key given twice. Each must be one clear line, a
non-zero exit, nothing written before damaged, and (for the disk) a re-run that finishes exactly as an
uninterrupted run would have.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from conftest import tiny_config
from test_cli_errors import run_fail

from qrobust.cli import main

NO_SPACE = os.strerror(errno.ENOSPC)
RUNS = {"main": [4, 8, 12], "decay8": [12]}  # the tiny config's checkpoints (tests/conftest.py)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _write_config(tmp_path: Path, **over) -> Path:
    cfg = tiny_config(tmp_path / "unused", **over)
    cfg.pop("out")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ckpt(out: Path, run: str, step: int) -> Path:
    return out / "checkpoints" / run / f"step-{step:07d}"


def _bytes(folder: Path) -> dict[str, bytes]:
    """Weights and optimizer state of a checkpoint folder (qrobust_state.json holds a wall-clock time)."""
    return {n: (folder / n).read_bytes() for n in ("model.safetensors", "optimizer.safetensors")}


def _leftovers(out: Path) -> list[str]:
    """Temporary files and folders of the atomic writers anywhere under ``out``."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


def _train(argv_out: Path, cfg: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["train", str(cfg), "--out", str(argv_out), "--quiet"])
    return rc, capsys.readouterr().err


def _assert_resumes_to_reference(out: Path, cfg: Path, reference: Path, capsys) -> None:
    """A re-run finishes, and every checkpoint and the step logs equal the uninterrupted run's, bit for bit."""
    rc, err = _train(out, cfg, capsys)
    assert rc == 0, err
    assert _leftovers(out) == []
    for run, steps in RUNS.items():
        for step in steps:
            assert _bytes(_ckpt(out, run, step)) == _bytes(_ckpt(reference, run, step)), (run, step)
        assert _log(out, run) == _log(reference, run), run


def _log(out: Path, run: str) -> list[dict]:
    """The step log without its wall-clock figures (tokens/s, MFU), which no two runs share."""
    from qrobust.training.throughput import TIMING_KEYS
    lines = (out / "logs" / f"{run}.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING_KEYS} for ln in lines]


# ---------------------------------------------------------------------------------------------------------
# 1. the disk fills while a checkpoint or the manifest is written
# ---------------------------------------------------------------------------------------------------------
def _fail_weights(monkeypatch, on_call: int) -> None:
    """transformers' safetensors writer: the ``on_call``-th model.safetensors is cut short by a full disk."""
    import transformers.modeling_utils as mu
    real, calls = mu.safe_save_file, [0]

    def save(tensors, filename, *args, **kwargs):
        calls[0] += 1
        if calls[0] == on_call:
            Path(filename).write_bytes(b"\0" * 100)  # what a full disk leaves: part of the file
            raise SafetensorError(f"Error while serializing: I/O error: {NO_SPACE} (os error {errno.ENOSPC})")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(mu, "safe_save_file", save)


def _fail_optimizer(monkeypatch, on_call: int) -> None:
    """safetensors.torch.save_file (the AdamW state beside the weights) fails with a plain ENOSPC OSError."""
    import safetensors.torch as st
    real, calls = st.save_file, [0]

    def save(tensors, filename, *args, **kwargs):
        if str(filename).endswith("optimizer.safetensors"):
            calls[0] += 1
            if calls[0] == on_call:
                raise OSError(errno.ENOSPC, NO_SPACE)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(st, "save_file", save)


def _fail_manifest(monkeypatch, on_call: int) -> None:
    """The ``on_call``-th write of trajectory.json fails at fsync (the data never reached the disk)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    real, calls = os.fsync, [0]

    def fsync(fd):
        if ".trajectory.json." in os.readlink(f"/proc/self/fd/{fd}"):
            calls[0] += 1
            if calls[0] == on_call:
                raise OSError(errno.ENOSPC, NO_SPACE)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("inject, names", [
    (_fail_weights, "checkpoint"),
    (_fail_optimizer, "checkpoint"),
    (_fail_manifest, "trajectory.json"),
], ids=["weights-safetensors", "optimizer-oserror", "manifest"])
def test_train_disk_full_one_line_then_resume(capsys, monkeypatch, tmp_path, tiny_run, inject, names):
    cfg = _write_config(tmp_path)
    out = tmp_path / "run"
    inject(monkeypatch, 2)  # the second checkpoint (step 8) or the second manifest (after step 8)
    line = run_fail(capsys, ["train", cfg, "--out", out, "--quiet"], NO_SPACE, "free space and re-run",
                    "resumes from the last complete checkpoint", names, code=2)
    if names == "checkpoint":
        assert str(_ckpt(out, "main", 8)) in line
        assert not _ckpt(out, "main", 8).exists()
    monkeypatch.undo()
    assert _leftovers(out) == []
    # what was written before the fault is complete and exactly the uninterrupted run's
    assert _bytes(_ckpt(out, "main", 4)) == _bytes(_ckpt(tiny_run, "main", 4))
    _assert_resumes_to_reference(out, cfg, tiny_run, capsys)


def test_disk_full_keeps_the_earlier_folder(tmp_path, monkeypatch):
    """Rewriting an existing folder that fails leaves the old one in place (atomic_dir), as one WriteError."""
    from qrobust.errors import QrobustError
    from qrobust.io.atomic import atomic_dir
    final = tmp_path / "f"
    final.mkdir()
    (final / "a").write_text("old")
    with pytest.raises(QrobustError) as ei:
        with atomic_dir(final, "thing") as tmp:
            (tmp / "a").write_text("new")
            raise OSError(errno.ENOSPC, NO_SPACE)
    assert str(ei.value).startswith(f"cannot write thing '{final}': {NO_SPACE}; free space")
    assert isinstance(ei.value, OSError) and ei.value.errno == errno.ENOSPC
    assert (final / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    # the final rename fails: the earlier folder is put back
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
                        if Path(a).name.startswith(".f.tmp-") else real(a, b))
    with pytest.raises(QrobustError, match="I/O error"):
        with atomic_dir(final, "thing") as tmp:
            (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert (final / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_store_record_disk_full_one_line(capsys, tmp_path, monkeypatch):
    """A results record that cannot be written: one line naming it; the store keeps its older records."""
    from qrobust.errors import WriteError
    from qrobust.results.store import Store
    s = Store(tmp_path)
    s.put("old", {"metrics": {"x": 1}})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, NO_SPACE)))
    with pytest.raises(WriteError) as ei:
        s.put("new", {"metrics": {"x": 2}})
    monkeypatch.undo()
    msg = str(ei.value)
    assert "\n" not in msg and str(tmp_path / "records" / "new.json") in msg and NO_SPACE in msg
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["old.json"]


def test_torn_log_line_does_not_stop_a_resume(tmp_path):
    """A full disk (or a kill) can cut the step log mid-line; resuming drops that line instead of crashing."""
    from qrobust.training.trackers.jsonl_log import truncate_log as _truncate_log
    log = tmp_path / "main.jsonl"
    log.write_text('{"step": 1, "loss": 5.7, "lr": 0.0}\n{"step": 2, "loss": 5.6, "lr": 0.001}\n{"step": 3, "lo')
    _truncate_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 5.7, "lr": 0.0}\n{"step": 2, "loss": 5.6, "lr": 0.001}\n'


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real, tiny filesystem (tmpfs); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _disk_bytes(paths: list[Path]) -> int:
    """What files take on a tmpfs: whole pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(-(-f.stat().st_size // page) * page for f in files)


def _resize(mnt: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True, capture_output=True)


def test_train_real_full_disk_then_resume(capsys, tmp_path, tiny_run, small_tmpfs):
    """A filesystem really runs out of space while the second checkpoint is written; freeing space
    (growing the tmpfs) and re-running finishes exactly like the uninterrupted run."""
    cfg = _write_config(tmp_path)
    out = small_tmpfs / "run"
    first = [tiny_run / "data", tiny_run / "train_config.json", tiny_run / "logs", _ckpt(tiny_run, "main", 4),
             tiny_run / "trajectory.json"]
    size = _disk_bytes(first) + _disk_bytes([_ckpt(tiny_run, "main", 8)]) // 2  # room for 1.5 checkpoints
    _resize(small_tmpfs, size)
    line = run_fail(capsys, ["train", cfg, "--out", out, "--quiet"], NO_SPACE, "free space and re-run", code=2)
    assert str(out) in line
    assert _leftovers(out) == []
    assert _bytes(_ckpt(out, "main", 4)) == _bytes(_ckpt(tiny_run, "main", 4))
    assert not _ckpt(out, "main", 8).exists()
    _resize(small_tmpfs, 64 * 2**20)  # "free space"
    _assert_resumes_to_reference(out, cfg, tiny_run, capsys)


# ---------------------------------------------------------------------------------------------------------
# 2. a batch that cannot fit in memory is refused up front
# ---------------------------------------------------------------------------------------------------------
def test_huge_batch_refused_quickly(capsys, tmp_path):
    cfg = _write_config(tmp_path, batch_size=100_000_000)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    line = run_fail(capsys, ["train", cfg, "--out", out, "--quiet"], "batch_size 100000000", "bytes",
                    "available", code=2)
    assert time.perf_counter() - t0 < 20  # it used to run silently for more than ten minutes
    need, free = (int(s.split()[0].replace(",", "")) for s in line.split("at least ")[1].split(" but ")[:2])
    assert need > free
    # 100M sequences of 32 int64 tokens alone are 25.6 GB: more than the inputs, by a lower bound
    assert need >= 100_000_000 * 32 * 8
    # nothing claims the folder: the corrected config trains there without "different config"
    assert not (out / "train_config.json").exists() and not (out / "checkpoints").exists()


def test_memory_estimate_is_a_lower_bound():
    """The refusal never refuses what fits: the estimate stays below what one step's graph really holds
    (tensors saved for backward, counted once per storage, plus the logits' gradient)."""
    from qrobust.models import build_model
    from qrobust.training.loop import step_memory_bytes
    for preset, vocab, batch, seq in [("micro", 300, 8, 32), ("tiny", 2048, 4, 64)]:
        model = build_model("gpt_neox", preset, vocab, seq)
        model.train()
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        x = torch.randint(0, vocab, (batch, seq))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=x, labels=x)
        held = sum(storages.values()) + out.logits.numel() * out.logits.element_size()
        assert step_memory_bytes(model.config, batch, seq) <= held, preset


def test_memory_check_names_the_numbers(capsys, tmp_path, monkeypatch):
    """Against a fixed amount of free memory the refusal is exact: just above refused, at the bound trains."""
    import qrobust.training.loop as loop
    from qrobust.models import model_config
    _, config = model_config("gpt_neox", "micro", 300, 32)
    need = loop.step_memory_bytes(config, 4, 32)
    monkeypatch.setattr(loop, "host_available_bytes", lambda: need - 1)
    cfg = _write_config(tmp_path, steps=1, checkpoint_every=1, branches=[])
    line = run_fail(capsys, ["train", cfg, "--out", tmp_path / "run", "--quiet"], "batch_size 4",
                    f"{need:,} bytes", f"{need - 1:,} bytes", code=2)
    assert "lower batch_size" in line


# ---------------------------------------------------------------------------------------------------------
# 3. a YAML key given twice is refused, not "last one wins"
# ---------------------------------------------------------------------------------------------------------
def test_duplicate_top_level_key_in_training_config(capsys, tmp_path):
    cfg = _write_config(tmp_path, steps=2, checkpoint_every=2, branches=[])
    text = cfg.read_text()
    first = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("steps:"))
    cfg.write_text(text + "steps: 3\n")
    last = len(text.splitlines()) + 1
    run_fail(capsys, ["train", cfg, "--out", tmp_path / "run"], str(cfg), "'steps'", f"lines {first} and {last}",
             code=2)
    assert not (tmp_path / "run").exists()


def test_duplicate_nested_key_in_sweep_config(capsys, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("trajectory: nowhere\nbits: [4]\neval:\n  n_blocks: 2\n  split: val\n  n_blocks: 300\n")
    run_fail(capsys, ["sweep", cfg, "--quiet", "--out", tmp_path / "r"], "'n_blocks'", "lines 4 and 6", code=2)
    assert not (tmp_path / "r").exists()


def test_duplicate_key_in_flow_mapping_of_experiment_file(capsys, tmp_path):
    text = (Path(__file__).parents[1] / "experiments" / "reproduce" / "f2.yaml").read_text()
    bad = text.replace("model: {arch: gpt_neox, preset: tiny}", "model: {arch: gpt_neox, preset: tiny, arch: rwkv}")
    assert bad != text
    exp = tmp_path / "f2.yaml"
    exp.write_text(bad)
    line_no = next(i for i, ln in enumerate(bad.splitlines(), 1) if "arch: rwkv" in ln)
    run_fail(capsys, ["reproduce", exp, "--out", tmp_path / "o"], "'arch'", f"lines {line_no} and {line_no}",
             code=2)
    assert not (tmp_path / "o").exists()


def test_duplicate_key_in_opt_value(capsys, tmp_path):
    run_fail(capsys, ["quantize", tmp_path / "ck", "--bits", "4", "--opt", "x={a: 1, a: 2}", "--out", tmp_path / "o"],
             "--opt x", "'a'", code=2)


def test_merge_keys_may_still_override(tmp_path):
    from qrobust.config import parse_yaml
    assert parse_yaml("base: &b {lr: 1, wd: 0}\nrun:\n  <<: *b\n  lr: 2\n", "t") == \
        {"base": {"lr": 1, "wd": 0}, "run": {"lr": 2, "wd": 0}}


def _shipped_yaml() -> list[Path]:
    root = Path(__file__).parents[1]
    src = root / "src" / "qrobust"
    files = [*(root / "experiments").glob("*.yaml"), *(src / "presets").glob("*.yaml"),
             *(src / "workflows" / "reproduction" / "configs").glob("*.yaml")]
    assert len(files) >= 16  # experiments/reproduce links to reproduction/configs
    return sorted(files)


@pytest.mark.parametrize("path", _shipped_yaml(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_yaml_still_loads(path):
    from qrobust.config import parse_yaml
    assert parse_yaml(path.read_text(), str(path)) == yaml.safe_load(path.read_text())


def test_presets_and_builtin_experiments_load():
    from qrobust.workflows.reproduction.spec import builtin_names, load_spec
    from qrobust.sources import preset_files
    assert {"pythia", "olmo2", "smollm3"} <= set(preset_files())
    for name in builtin_names():
        load_spec(name)
