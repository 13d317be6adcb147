"""Experiment trackers (issue 17): the registry and fan-out, the JSONL step log (same format and resume rule
as the loop's), TensorBoard event files and offline wandb runs read back independently of the writers."""
from __future__ import annotations

import glob
import json
import struct
import sys
import time
from pathlib import Path

import pytest

from qrobust.errors import ConfigError, QrobustError, WriteError
from qrobust.training.trackers import (TRACKERS, TrackerContext, check_trackers, events_dir, log_path,
                                       open_trackers, run_id, series_name, wandb_mode)

STEPS = [(s, {"loss": 10.0 / s, "lr": 1e-3 * s}) for s in range(1, 11)]


def ctx_for(tmp_path: Path, run: str = "main", resume_step: int = 0, config: dict | None = None) -> TrackerContext:
    return TrackerContext(out=tmp_path, run=run, project="proj", config=config or {"seed": 3},
                          resume_step=resume_step)


def log_steps(names: list[str], ctx: TrackerContext, steps) -> None:
    with open_trackers(names, ctx) as t:
        for step, metrics in steps:
            t.log(step, metrics)
        t.flush()


# --- registry and fan-out -----------------------------------------------------------------------------

def test_unknown_tracker_is_one_line_listing_the_known_ones_and_creates_nothing(tmp_path):
    with pytest.raises(ConfigError) as e:
        open_trackers(["jsonl", "mlflow"], ctx_for(tmp_path))
    assert str(e.value) == "unknown tracker 'mlflow'; known: jsonl, tensorboard, wandb"
    assert not (tmp_path / "logs").exists()
    check_trackers(["jsonl", "tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="unknown tracker 'tb'"):
        check_trackers(["jsonl", "tb"])


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_missing_package_names_the_pip_extra(tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError
    with pytest.raises(QrobustError) as e:
        open_trackers(["jsonl", name], ctx_for(tmp_path))
    assert "\n" not in str(e.value)
    assert f"tracker '{name}' needs" in str(e.value) and "pip install 'qrobust[trackers]'" in str(e.value)
    # the jsonl tracker opened before it was closed again: its file is complete and not held open
    assert log_path(ctx_for(tmp_path)).read_text() == ""


class Recorder:
    def __init__(self, calls: list, name: str, fail_close: bool = False) -> None:
        self.calls, self.name, self.fail_close = calls, name, fail_close

    def log(self, step, metrics):
        self.calls.append((self.name, "log", step, dict(metrics)))

    def flush(self):
        self.calls.append((self.name, "flush"))

    def close(self):
        self.calls.append((self.name, "close"))
        if self.fail_close:
            raise RuntimeError(f"{self.name} failed")


def test_a_tracker_registered_from_outside_receives_every_call_in_order(tmp_path):
    calls: list = []
    TRACKERS.register("rec-a")(lambda ctx: Recorder(calls, "a", fail_close=True))
    TRACKERS.register("rec-b")(lambda ctx: Recorder(calls, "b"))
    try:
        t = open_trackers(["rec-a", "rec-b", "rec-a"], ctx_for(tmp_path))  # a repeated name opens once
        t.log(5, {"loss": 1.5})
        t.flush()
        with pytest.raises(RuntimeError, match="a failed"):
            t.close()  # b is still closed after a failed
    finally:
        del TRACKERS["rec-a"], TRACKERS["rec-b"]
    assert calls == [("a", "log", 5, {"loss": 1.5}), ("b", "log", 5, {"loss": 1.5}), ("a", "flush"),
                     ("b", "flush"), ("a", "close"), ("b", "close")]


def test_a_tracker_failing_to_open_closes_those_already_open(tmp_path):
    calls: list = []

    def broken(ctx):
        raise QrobustError("cannot open")
    TRACKERS.register("rec-ok")(lambda ctx: Recorder(calls, "ok"))
    TRACKERS.register("rec-broken")(broken)
    try:
        with pytest.raises(QrobustError, match="cannot open"):
            open_trackers(["rec-ok", "rec-broken"], ctx_for(tmp_path))
    finally:
        del TRACKERS["rec-ok"], TRACKERS["rec-broken"]
    assert calls == [("ok", "close")]


def test_series_names_group_bare_keys_under_train():
    assert [series_name(k) for k in ("loss", "lr", "tokens_per_s", "monitor/sharpness")] == \
        ["train/loss", "train/lr", "train/tokens_per_s", "monitor/sharpness"]


# --- jsonl --------------------------------------------------------------------------------------------

def test_jsonl_writes_the_loops_format_one_object_per_line_step_first(tmp_path):
    ctx = ctx_for(tmp_path)
    log_steps(["jsonl"], ctx, [(1, {"loss": 2.5, "lr": 0.001}), (2, {"loss": 2.25, "lr": 0.002, "mfu": None})])
    assert log_path(ctx) == tmp_path / "logs" / "main.jsonl"
    assert log_path(ctx).read_text() == ('{"step": 1, "loss": 2.5, "lr": 0.001}\n'
                                         '{"step": 2, "loss": 2.25, "lr": 0.002}\n')


def test_jsonl_resume_drops_later_and_torn_lines_so_the_log_equals_an_uninterrupted_one(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    log_steps(["jsonl"], ctx_for(whole), STEPS)
    log_steps(["jsonl"], ctx_for(cut), STEPS[:8])  # killed after step 8, last checkpoint at 6
    with log_path(ctx_for(cut)).open("a") as f:
        f.write('{"step": 9, "lo')  # torn by the kill
    log_steps(["jsonl"], ctx_for(cut, resume_step=6), STEPS[6:])
    assert log_path(ctx_for(cut)).read_text() == log_path(ctx_for(whole)).read_text()
    assert [json.loads(ln)["step"] for ln in log_path(ctx_for(cut)).read_text().splitlines()] == list(range(1, 11))


def test_jsonl_full_disk_is_one_write_error_naming_the_log(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    t = open_trackers(["jsonl"], ctx_for(tmp_path))
    jsonl = t.trackers[0]
    jsonl.file.close()
    jsonl.file = open("/dev/full", "a")  # every flush fails with ENOSPC
    t.log(1, {"loss": 1.0})
    with pytest.raises(WriteError) as e:
        t.flush()
    assert str(e.value).startswith(f"cannot write training log '{log_path(ctx_for(tmp_path))}'")
    assert "free space" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WriteError):
        t.close()  # the same one line, and the file is closed all the same
    assert jsonl.file.closed


# --- tensorboard --------------------------------------------------------------------------------------

def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_one_series_per_metric(tmp_path):
    ctx = ctx_for(tmp_path)
    log_steps(["jsonl", "tensorboard"], ctx, [(s, {**m, "mfu": None}) for s, m in STEPS])
    assert events_dir(ctx) == tmp_path / "logs" / "tensorboard" / "main"
    got = read_scalars(events_dir(ctx))
    assert sorted(got) == ["train/loss", "train/lr"]  # mfu had no value: no series
    for key in ("loss", "lr"):
        assert [s for s, _ in got[f"train/{key}"]] == list(range(1, 11))
        assert [v for _, v in got[f"train/{key}"]] == pytest.approx([m[key] for _, m in STEPS], rel=1e-6)


def test_tensorboard_resume_purges_what_was_logged_after_the_checkpoint(tmp_path):
    first = [(s, {"loss": 100.0 + s}) for s in range(1, 9)]  # killed after step 8, checkpoint at 6
    second = [(s, {"loss": 200.0 + s}) for s in range(7, 13)]  # resumed from 6: steps 7..12 again
    log_steps(["tensorboard"], ctx_for(tmp_path), first)
    log_steps(["tensorboard"], ctx_for(tmp_path, resume_step=6), second)
    got = read_scalars(events_dir(ctx_for(tmp_path)))["train/loss"]
    expected = [(s, 100.0 + s) for s in range(1, 7)] + [(s, 200.0 + s) for s in range(7, 13)]
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected])


# --- wandb --------------------------------------------------------------------------------------------

@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """No credentials anywhere wandb looks, and its caches inside tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))


def wandb_records(path: Path) -> list:
    """Every record of an offline .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB-log
    framing (32 KiB blocks; chunks of crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunks)
            records.append(rec)
            chunks = b""
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_without_credentials_writes_an_offline_run_holding_the_series(tmp_path, no_wandb_login, capfd):
    ctx = ctx_for(tmp_path, run="cool-1", config={"seed": 3, "optim": {"lr": 0.001}})
    log_steps(["wandb"], ctx, [(s, {**m, "mfu": None}) for s, m in STEPS[:5]])
    runs = glob.glob(str(tmp_path / "logs" / "wandb" / "wandb" / "offline-run-*"))
    assert len(runs) == 1 and runs[0].endswith(f"-{run_id(tmp_path, 'cool-1')}")
    records = wandb_records(Path(runs[0]) / f"run-{run_id(tmp_path, 'cool-1')}.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.project, run.display_name) == (run_id(tmp_path, "cool-1"), "proj", "cool-1")
    config = {item_key(i): json.loads(i.value_json) for i in run.config.update}
    assert config["seed"] == 3 and config["optim"] == {"lr": 0.001}
    rows = [{item_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    assert [r["_step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["train/loss"] for r in rows] == [m["loss"] for _, m in STEPS[:5]]
    assert [r["train/lr"] for r in rows] == [m["lr"] for _, m in STEPS[:5]]
    assert not any("train/mfu" in r for r in rows)
    assert "wandb" not in capfd.readouterr().err.lower()  # silent


def test_wandb_run_id_is_stable_per_folder_and_run():
    assert run_id(Path("/a/out"), "main") == run_id(Path("/a/out/../out"), "main")
    assert len({run_id(Path("/a/out"), "main"), run_id(Path("/a/out"), "cool"), run_id(Path("/b"), "main")}) == 3


def test_wandb_mode_follows_credentials_and_never_asks_for_them(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    other = tmp_path / "other"
    other.write_text("machine example.org login user password x\n")
    none = str(tmp_path / "missing")
    assert wandb_mode({"NETRC": none}) == "offline"
    assert wandb_mode({"NETRC": none, "WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode({"NETRC": str(netrc)}) == "online"
    assert wandb_mode({"NETRC": str(other)}) == "offline"
    assert wandb_mode({"NETRC": str(other), "WANDB_BASE_URL": "https://example.org"}) == "online"
    assert wandb_mode({"NETRC": str(netrc), "WANDB_MODE": "disabled"}) == "disabled"
    with pytest.raises(QrobustError, match="WANDB_MODE=online but no wandb credentials"):
        wandb_mode({"NETRC": none, "WANDB_MODE": "online"})


def test_wandb_resumed_run_continues_the_same_run_id(tmp_path, no_wandb_login):
    log_steps(["wandb"], ctx_for(tmp_path), STEPS[:3])
    time.sleep(1.0)  # wandb names offline folders by the second
    log_steps(["wandb"], ctx_for(tmp_path, resume_step=2), STEPS[2:5])
    runs = sorted(glob.glob(str(tmp_path / "logs" / "wandb" / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith(f"-{run_id(tmp_path, 'main')}") for r in runs)
    records = wandb_records(Path(runs[-1]) / f"run-{run_id(tmp_path, 'main')}.wandb")
    steps = [json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "history"
             for i in r.history.item if item_key(i) == "_step"]
    assert steps == [3, 4, 5]
