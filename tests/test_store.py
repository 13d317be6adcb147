"""The results store: keys, round trips, export, and crash safety (an exception mid-write, a SIGKILL)."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import qrobust.trajectory
from qrobust.errors import QrobustError
from qrobust.results.store import COLUMNS, RECORD_SCHEMA, Store, record_key


def _rec(traj: str, run: str, step: int, method: str, bits: int, gs: int = 128, dq: float = 0.01) -> dict:
    return {
        "trajectory": traj,
        "checkpoint": {"name": f"{run}/step-{step}", "run": run, "step": step, "tokens": step * 1000,
                       "lr": 0.001, "phase": "stable"},
        "variant": {"method": method, "bits": bits, "group_size": gs, "sym": True},
        "metrics": {"loss_fp": 3.0, "loss_q": 3.0 * (1 + dq), "dq_rel": dq, "dq_abs": 3.0 * dq},
        "eval_set": {"id": "ev1", "n_tokens": 4096},
    }


# ------------------------------------------------------------------------------------------------------
# record_key
# ------------------------------------------------------------------------------------------------------
def test_record_key_stable_under_key_order():
    a = {"checkpoint": {"path": "/x/step-1", "step": 1}, "variant": {"method": "rtn", "bits": 4, "gs": 128},
         "eval": {"id": "e", "n": 10}}
    b = {"eval": {"n": 10, "id": "e"}, "variant": {"gs": 128, "bits": 4, "method": "rtn"},
         "checkpoint": {"step": 1, "path": "/x/step-1"}}
    assert record_key(a) == record_key(b)
    assert record_key(a) == record_key(json.loads(json.dumps(a)))
    k = record_key(a)
    assert re.fullmatch(r"[0-9a-f]{20}", k)


def test_record_key_changes_with_any_nested_value():
    base = {"checkpoint": {"path": "/x", "step": 1}, "variant": {"method": "rtn", "bits": 4,
                                                                 "opts": {"damp": 0.01, "order": [1, 2]}}}
    k0 = record_key(base)
    mutations = [
        ("checkpoint", "path", "/y"),
        ("checkpoint", "step", 2),
        ("variant", "method", "gptq"),
        ("variant", "bits", 3),
    ]
    seen = {k0}
    for outer, inner, val in mutations:
        m = json.loads(json.dumps(base))
        m[outer][inner] = val
        k = record_key(m)
        assert k != k0, (outer, inner)
        seen.add(k)
    m = json.loads(json.dumps(base))
    m["variant"]["opts"]["damp"] = 0.02
    seen.add(record_key(m))
    assert record_key(m) != k0
    m = json.loads(json.dumps(base))
    m["variant"]["opts"]["order"] = [2, 1]  # list order matters
    seen.add(record_key(m))
    assert record_key(m) != k0
    m = json.loads(json.dumps(base))
    m["variant"]["extra"] = None  # a new field, even None, changes the key
    seen.add(record_key(m))
    assert len(seen) == 8  # all distinct


# ------------------------------------------------------------------------------------------------------
# put / get / has / records / export
# ------------------------------------------------------------------------------------------------------
def test_put_get_has_roundtrip(tmp_path):
    s = Store(tmp_path / "res")
    for sub in ("records", "fp", "trajectories"):
        assert (tmp_path / "res" / sub).is_dir()
    assert not s.has("k1") and s.get("k1") is None
    rec = _rec("T", "main", 10, "rtn", 4, dq=0.0125)
    rec["metrics"]["nan_val"] = float("nan")
    s.put("k1", rec)
    assert s.has("k1")
    assert (tmp_path / "res" / "records" / "k1.json").is_file()
    got = s.get("k1")
    stored = got.to_dict()  # the JSON as written: schema, provenance and every field put
    assert stored["schema"] == RECORD_SCHEMA and got.key == "k1"
    for field in ("created", "host", "versions"):
        assert field in stored
    for field in ("trajectory", "checkpoint", "variant", "eval_set"):
        assert stored[field] == rec[field]
    assert got.metrics.dq_rel == 0.0125
    assert stored["metrics"]["nan_val"] != stored["metrics"]["nan_val"]  # NaN survives
    # the fp kind is a separate namespace
    assert not s.has("k1", kind="fp")
    s.put("k1", {"loss": 2.5}, kind="fp")
    assert s.get("k1", kind="fp").loss == 2.5
    assert s.get("k1").metrics.dq_rel == 0.0125
    # overwrite
    s.put("k1", _rec("T", "main", 10, "rtn", 4, dq=0.5))
    assert s.get("k1").metrics.dq_rel == 0.5
    # reopening an existing folder without create
    again = Store(tmp_path / "res", create=False)
    assert again.get("k1").metrics.dq_rel == 0.5
    assert len(again.records()) == 1


def test_records_sorted(tmp_path):
    s = Store(tmp_path)
    recs = [
        _rec("B", "main", 5, "rtn", 4),
        _rec("A", "main", 20, "rtn", 4),
        _rec("A", "main", 3, "rtn", 8),
        _rec("A", "main", 3, "rtn", 4, gs=64),
        _rec("A", "main", 3, "rtn", 4, gs=32),
        _rec("A", "main", 3, "gptq", 4),
        _rec("A", "branch", 100, "rtn", 4),
    ]
    rng = random.Random(0)
    keys = [f"{i:02d}{rng.randrange(10**6):06d}" for i in range(len(recs))]
    order = list(range(len(recs)))
    rng.shuffle(order)  # file names do not follow the expected order
    for i in order:
        s.put(keys[::-1][i], recs[i])
    got = [(r.trajectory, r.checkpoint.run, r.checkpoint.step, r.variant.method,
            r.variant.bits, r.variant.group_size) for r in s.records()]
    assert got == [
        ("A", "branch", 100, "rtn", 4, 128),
        ("A", "main", 3, "gptq", 4, 128),
        ("A", "main", 3, "rtn", 4, 32),
        ("A", "main", 3, "rtn", 4, 64),
        ("A", "main", 3, "rtn", 8, 128),
        ("A", "main", 20, "rtn", 4, 128),
        ("B", "main", 5, "rtn", 4, 128),
    ]


def test_export_csv_and_json(tmp_path):
    s = Store(tmp_path)
    r1 = _rec("A", "main", 7, "rtn", 3, gs=64, dq=0.0125)
    r1["weight_error"] = {"rel_err_mean": 0.25}
    r1["timings"] = {"quantize_s": 1.5, "eval_s": 2.0}
    s.put("key-one", r1)
    s.put("key-two", {"trajectory": "B", "metrics": {"loss_fp": 1.0}})  # sparse record
    text = s.export("csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == COLUMNS
    assert len(rows) == 3
    first = dict(zip(rows[0], rows[1]))
    assert first["trajectory"] == "A"
    assert first["checkpoint.name"] == "main/step-7"
    assert first["checkpoint.run"] == "main"
    assert first["checkpoint.step"] == "7"
    assert first["checkpoint.tokens"] == "7000"
    assert first["checkpoint.lr"] == "0.001"
    assert first["checkpoint.phase"] == "stable"
    assert first["variant.method"] == "rtn"
    assert first["variant.bits"] == "3"
    assert first["variant.group_size"] == "64"
    assert first["variant.sym"] == "True"
    assert first["metrics.loss_fp"] == "3.0"
    assert first["metrics.dq_rel"] == "0.0125"
    assert float(first["metrics.loss_q"]) == pytest.approx(3.0375)
    assert first["metrics.ppl_fp"] == ""  # absent -> empty cell
    assert first["weight_error.rel_err_mean"] == "0.25"
    assert first["eval_set.id"] == "ev1" and first["eval_set.n_tokens"] == "4096"
    assert first["timings.quantize_s"] == "1.5" and first["timings.eval_s"] == "2.0"
    assert first["key"] == "key-one"
    second = dict(zip(rows[0], rows[2]))
    assert second["trajectory"] == "B" and second["key"] == "key-two" and second["metrics.loss_fp"] == "1.0"
    assert second["variant.bits"] == "" and second["checkpoint.step"] == ""

    js = json.loads(s.export("json"))
    assert js == [r.to_dict() for r in s.records()]
    assert [r["key"] for r in js] == ["key-one", "key-two"]

    out = tmp_path / "exports" / "all.csv"
    assert s.export("csv", out) == text
    assert out.read_text() == text


def test_export_unknown_format(tmp_path):
    s = Store(tmp_path)
    with pytest.raises(QrobustError, match="xlsx"):
        s.export("xlsx")


# ------------------------------------------------------------------------------------------------------
# crash safety
# ------------------------------------------------------------------------------------------------------
class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_put_interrupted_before_rename_leaves_nothing(tmp_path, monkeypatch, exc):
    s = Store(tmp_path)
    s.put("old", _rec("A", "main", 1, "rtn", 4, dq=0.1))
    before = (tmp_path / "records" / "old.json").read_bytes()
    calls = []

    def boom(src, dst):
        calls.append((str(src), str(dst)))
        raise exc("simulated crash in os.replace")

    monkeypatch.setattr(qrobust.trajectory.os, "replace", boom)
    with pytest.raises(exc):
        s.put("new", _rec("A", "main", 2, "rtn", 4, dq=0.2))
    # it did fail at the rename of the fully written temp file
    assert len(calls) == 1 and calls[0][1].endswith("new.json")
    # a failed overwrite of an existing key leaves the old record intact
    with pytest.raises(exc):
        s.put("old", _rec("A", "main", 1, "rtn", 4, dq=0.9))
    monkeypatch.undo()

    files = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert files == ["old.json"]  # no new.json, no temp leftovers, no half file
    assert not s.has("new") and s.get("new") is None
    assert (tmp_path / "records" / "old.json").read_bytes() == before
    assert s.get("old").metrics.dq_rel == 0.1
    assert [r.key for r in s.records()] == ["old"]


def test_put_interrupted_during_write(tmp_path, monkeypatch):
    s = Store(tmp_path)
    s.put("old", _rec("A", "main", 1, "rtn", 4))

    def bad_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qrobust.trajectory.os, "fsync", bad_fsync)
    with pytest.raises(OSError):
        s.put("new", _rec("A", "main", 2, "rtn", 4))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["old.json"]
    assert [r.key for r in s.records()] == ["old"]


def test_records_ignores_leftover_temp_files(tmp_path):
    s = Store(tmp_path)
    s.put("good", _rec("A", "main", 1, "rtn", 4))
    rec_dir = tmp_path / "records"
    # what a kill between mkstemp and rename leaves behind: a hidden, half-written temp file
    (rec_dir / ".half.json.k3j2x9.tmp").write_text('{"metrics": {"loss_q": 3.')
    (rec_dir / ".good.json.abc123.tmp").write_text("{")
    recs = s.records()
    assert [r.key for r in recs] == ["good"]
    assert not s.has("half")
    assert "good" in s.export("csv") and "half" not in s.export("csv")


_SERVER = r"""
import os, sys
from qrobust.results.store import Store, versions
versions()  # import torch / transformers / tokenizers once, before forking workers
store = Store(sys.argv[1])
payload = "x" * 300_000  # big records: a kill often lands mid-write
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "quit":
        break
    it = int(cmd)
    pid = os.fork()
    if pid == 0:
        try:
            i = 0
            while True:
                store.put("k%03d" % (i % 16), {"metrics": {"it": it, "i": i}, "payload": payload})
                i += 1
        finally:
            os._exit(3)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


def _records_of_iteration(rec_dir: Path, it: int) -> int:
    n = 0
    for p in rec_dir.glob("k*.json"):
        try:
            if json.loads(p.read_text())["metrics"]["it"] == it:
                n += 1
        except (OSError, ValueError, KeyError):
            pass
    return n


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="POSIX only")
def test_sigkill_mid_put_never_leaves_a_corrupt_record(tmp_path):
    root = tmp_path / "res"
    rec_dir = root / "records"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    rng = random.Random(20240601)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for it in range(5):
            proc.stdin.write(f"{it}\n")
            proc.stdin.flush()
            pid = int(proc.stdout.readline())
            deadline = time.monotonic() + 10
            while _records_of_iteration(rec_dir, it) == 0:  # the worker is writing
                assert time.monotonic() < deadline, "worker never wrote a record"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            status = int(proc.stdout.readline())
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

            names = sorted(p.name for p in rec_dir.iterdir())
            records = [n for n in names if not n.endswith(".tmp")]
            leftovers = [n for n in names if n.endswith(".tmp")]
            assert records and all(re.fullmatch(r"k\d{3}\.json", n) for n in records), names
            assert all(re.fullmatch(r"\.k\d{3}\.json\..+\.tmp", n) for n in leftovers), names
            for n in records:
                rec = json.loads((rec_dir / n).read_text())  # every record parses: none is half written
                assert "metrics" in rec and rec["key"] == n[:-5]
                assert 0 <= rec["metrics"]["it"] <= it
                assert rec["payload"] == "x" * 300_000
            loaded = Store(root, create=False).records()
            assert sorted(r.key for r in loaded) == sorted(n[:-5] for n in records)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------------
# bad folders
# ------------------------------------------------------------------------------------------------------
def test_store_on_a_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a folder")
    for target in (f, f / "sub"):
        with pytest.raises(QrobustError) as ei:
            Store(target, create=True)
        msg = str(ei.value)
        assert "\n" not in msg
        assert str(target) in msg
        assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert f.read_text() == "not a folder"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_store_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(QrobustError) as ei:
            Store(ro / "res", create=True)
        assert "\n" not in str(ei.value)
    finally:
        ro.chmod(0o700)


def test_store_without_create_needs_records(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QrobustError, match="records"):
        Store(empty, create=False)
    with pytest.raises(QrobustError):
        Store(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    assert list(empty.iterdir()) == []  # create=False never writes
