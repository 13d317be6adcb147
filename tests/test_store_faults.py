"""Results that must not be lost: bad record files are reported and redone, a killed worker's claims are
taken over (or the sweep says what is left), and temporary leftovers of a kill are cleaned on the next run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import qrobust.sweeps.run as sweep_run
from qrobust.sweeps.plan import checkpoint_identity
from qrobust import leftovers
from qrobust.cli import main
from qrobust.errors import QrobustWarning
from qrobust.sweeps import Store
from qrobust.sweeps.claims import Claim
from qrobust.results.store import RECORD_SCHEMA, record_key

from conftest import TINY_SWEEP

KINDS = ("records", "fp", "geometry", "tasks", "tasks_fp")
# what a record is compared on: everything computed (not when, where or how fast)
COMPUTED = ("trajectory", "checkpoint", "checkpoint_id", "variant", "calibration", "eval_set", "metrics",
            "weight_error", "layers", "blocks", "dtype")


def _cfg(tiny_run: Path, out: Path, **kw) -> dict:
    """The reference sweep's config (conftest's TINY_SWEEP), writing to ``out``."""
    return {"trajectory": str(tiny_run), "out": str(out), **TINY_SWEEP, **kw}


def _write_cfg(tmp_path: Path, cfg: dict) -> str:
    f = tmp_path / f"sweep-{len(list(tmp_path.glob('sweep-*.json')))}.json"
    f.write_text(json.dumps(cfg))
    return str(f)


def _computed(root: Path) -> dict[str, dict]:
    return {r.key: {k: r.to_dict().get(k) for k in COMPUTED} for r in Store(root, create=False).records()}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _warning_lines(err: str, cmd: str) -> list[str]:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert all(ln.startswith(f"qrobust {cmd}: warning: ") for ln in lines), err
    assert "Traceback" not in err
    return lines


@pytest.fixture
def clean_results(tiny_results) -> Path:
    """An uninterrupted sweep of the tiny trajectory: the reference every damaged run must equal."""
    return tiny_results


def _bad_files(folder: Path) -> dict[str, str]:
    """File name -> content of every kind of bad record file (a folder for 'dir.json')."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {"schema": RECORD_SCHEMA, "key": "other", "metrics": {}}
    bad = {"truncated.json": '{"schema": "qrobust.record/1", "key": "truncated", "metrics": {"loss_q": 3.',
           "list.json": "[1]", "empty.json": "{}", "null.json": "null", "binary.json": "\udcff",
           "noschema.json": json.dumps({"key": "noschema", "metrics": {}}),
           "wrongkey.json": json.dumps(good)}
    for name, text in bad.items():
        (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    (folder / "dir.json").mkdir()
    return {**bad, "dir.json": ""}


# ------------------------------------------------------------------------------------------------------
# 1 + 2: bad record files are skipped with a warning naming them, and count as missing
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bad_record_files_are_skipped_with_a_warning_each(tmp_path, kind):
    s = Store(tmp_path / "res")
    s.put("good", {"trajectory": "T", "checkpoint": {"run": "main", "step": 1}, "metrics": {"dq_rel": 0.1}},
          kind=kind)
    bad = _bad_files(tmp_path / "res" / kind)
    with pytest.warns(QrobustWarning) as got:
        recs = s.records() if kind == "records" else s.side_records(kind)
    assert [r.key for r in recs] == ["good"]
    named = sorted(str(w.message).split("'")[1] for w in got)
    assert named == sorted(str(tmp_path / "res" / kind / n) for n in bad)  # one warning per bad file
    with _no_warning():  # each file is reported once per Store
        (s.records() if kind == "records" else s.side_records(kind))
    for name in bad:
        key = name[:-5]
        assert not s.has(key, kind=kind) and s.get(key, kind=kind) is None  # missing: a sweep redoes it
    assert s.has("good", kind=kind) and s.get("good", kind=kind).to_dict()["metrics"] == {"dq_rel": 0.1}


class _no_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings(record=True)
        self.got = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.got if issubclass(w.category, QrobustWarning)], [str(w.message) for w in self.got]


def test_fresh_store_warns_again_and_get_never_crashes(tmp_path):
    root = tmp_path / "res"
    Store(root)
    _bad_files(root / "records")
    for key in ("truncated", "list", "empty", "null", "binary", "noschema", "wrongkey", "dir"):
        with pytest.warns(QrobustWarning, match=f"{key}.json"):
            assert Store(root, create=False).get(key) is None


def test_trajectory_and_config_files_are_skipped_with_a_warning(tmp_path):
    s = Store(tmp_path / "res")
    (tmp_path / "res" / "trajectories" / "good.json").write_text('{"name": "good"}')
    (tmp_path / "res" / "trajectories" / "cut.json").write_text('{"name": "c')
    (tmp_path / "res" / "trajectories" / "list.json").write_text("[1]")
    (tmp_path / "res" / "trajectories" / "dir.json").mkdir()
    s.save_config({"a": 1})
    (tmp_path / "res" / "configs" / "sweep-bad.json").write_text("[")
    (tmp_path / "res" / "configs" / "sweep-list.json").write_text("[]")
    with pytest.warns(QrobustWarning) as got:
        assert s.trajectories() == {"good": {"name": "good"}}
        assert s.configs() == [{"a": 1}]
    assert sorted(Path(str(w.message).split("'")[1]).name for w in got) == [
        "cut.json", "dir.json", "list.json", "sweep-bad.json", "sweep-list.json"]


def _synthetic_store(root: Path) -> Store:
    from test_report import _demo_store
    return _demo_store(root)


def test_results_and_report_skip_bad_files_with_one_warning_line_each(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root = tmp_path / "res"
    s = _synthetic_store(root)
    n_good = len(s.records())
    bad = {str(root / "records" / n) for n in _bad_files(root / "records")}
    (root / "geometry").mkdir()
    (root / "geometry" / "cut.json").write_text('{"schema": "qrob')
    (root / "tasks").mkdir()
    (root / "tasks" / "list.json").write_text("[1]")
    (root / "trajectories" / "cut.json").write_text("{")
    bad_side = {str(root / "geometry" / "cut.json"), str(root / "tasks" / "list.json"),
                str(root / "trajectories" / "cut.json")}
    for fmt in ("table", "csv", "json"):
        capsys.readouterr()
        assert main(["results", str(root), "--format", fmt]) == 0
        out, err = capsys.readouterr()
        lines = _warning_lines(err, "results")
        assert {ln.split("'")[1] for ln in lines} == bad and len(lines) == len(bad)  # once each, not per reader
        if fmt == "json":
            assert len(json.loads(out)) == n_good
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    out, err = capsys.readouterr()
    lines = _warning_lines(err, "report")
    assert {ln.split("'")[1] for ln in lines} == bad | bad_side and len(lines) == len(bad | bad_side)
    assert (tmp_path / "rep" / "index.html").is_file()
    # readers never move, rewrite or delete what they report
    assert all(Path(p).exists() for p in bad | bad_side)


def test_results_table_shows_a_record_without_metrics(tmp_path, capsys):
    s = Store(tmp_path / "res")
    s.put("k", {"trajectory": "T", "checkpoint": {"name": "main/step-1", "step": 1},
                "variant": {"method": "rtn", "bits": 4, "group_size": 16}})
    assert main(["results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "main/step-1" in out and "rtn-w4g16" in out


def test_sweep_redoes_bad_records_bit_identically(tiny_run, clean_results, tmp_path, capsys):
    res = tmp_path / "res"
    shutil.copytree(clean_results, res)
    recs = sorted((res / "records").glob("*.json"))
    truncated, listed = recs[0], recs[1]
    truncated.write_bytes(truncated.read_bytes()[:200])  # a record cut mid-write (a full disk, a bad copy)
    listed.write_text("[1]")
    ck_of_truncated = json.loads((clean_results / "records" / truncated.name).read_text())["checkpoint"]["name"]
    fp_file = next(p for p in (res / "fp").glob("*.json")
                   if json.loads(p.read_text())["checkpoint"]["name"] == ck_of_truncated)
    fp_file.write_text("{}")
    untouched = {p.name: p.read_bytes() for p in recs[2:]}
    capsys.readouterr()
    assert main(["sweep", _write_cfg(tmp_path, _cfg(tiny_run, res)), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "2 new records" in out and "6 already done" in out and "1 FP evaluations" in out
    lines = _warning_lines(err, "sweep")
    assert sorted(ln.split("'")[1] for ln in lines) == sorted(map(str, (truncated, listed, fp_file)))
    assert _computed(res) == _computed(clean_results)  # redone, with the very same numbers
    fp_new, fp_ref = json.loads(fp_file.read_text()), json.loads((clean_results / "fp" / fp_file.name).read_text())
    assert (fp_new["loss"], fp_new["block_nll"]) == (fp_ref["loss"], fp_ref["block_nll"])
    assert {p.name: p.read_bytes() for p in recs[2:]} == untouched  # valid records are never rewritten
    capsys.readouterr()
    assert main(["results", str(res)]) == 0
    assert capsys.readouterr().err == ""  # nothing bad is left


# ------------------------------------------------------------------------------------------------------
# 3: claims of a killed worker are taken over; claims of a live one are waited for, or reported as left
# ------------------------------------------------------------------------------------------------------
def _group_key(tiny_run: Path, i: int) -> str:
    from qrobust.sources import load_source, resolve_checkpoint
    c = load_source(str(tiny_run)).checkpoints[i]
    ck = replace(c, path=str(resolve_checkpoint(c)))
    return record_key({"checkpoint": checkpoint_identity(ck, "float32")})


_HOLDER = """
import sys, time
from qrobust.sweeps.claims import Claim, worker_id
c = Claim(sys.argv[1], sys.argv[2], worker_id(), ttl=0.4)
assert c.acquire()
print("held", flush=True)
time.sleep(300)
"""


def test_claim_left_by_a_dead_pid_is_taken_over(tiny_run, clean_results, tmp_path, capsys):
    res = tmp_path / "res"
    (res / "claims").mkdir(parents=True)
    pid = _dead_pid()
    (res / "claims" / f"{_group_key(tiny_run, 0)}.000000.json").write_text(json.dumps(
        {"worker": f"{socket.gethostname()}:{pid}:dead", "host": socket.gethostname(), "pid": pid}))
    assert main(["sweep", _write_cfg(tmp_path, _cfg(tiny_run, res)), "--quiet"]) == 0
    assert _computed(res) == _computed(clean_results)
    assert not list((res / "claims").glob("*.json"))


def test_worker_killed_while_holding_a_claim_is_taken_over_before_exit(tiny_run, clean_results, tmp_path,
                                                                      capsys, monkeypatch):
    """The holder is alive when the sweep reaches its group and killed while the sweep does the others:
    the sweep must come back to the group, see the dead holder and finish it (it used to exit 0 without)."""
    res = tmp_path / "res"
    Store(res)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(res), _group_key(tiny_run, 0)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        real = sweep_run.run_group

        def run_then_kill(*a, **kw):
            real(*a, **kw)
            if holder.poll() is None:
                holder.send_signal(signal.SIGKILL)
                holder.wait()
        monkeypatch.setattr(sweep_run, "run_group", run_then_kill)
        capsys.readouterr()
        assert main(["sweep", _write_cfg(tmp_path, _cfg(tiny_run, res)), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "8 new records" in out and "1 held by other workers" in out and "4 model loads" in out
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert _computed(res) == _computed(clean_results)
    assert not list((res / "claims").glob("*.json"))


def test_live_foreign_claim_never_released_is_reported_as_left(tiny_run, clean_results, tmp_path, capsys):
    res = tmp_path / "res"
    Store(res)
    other = Claim(res, _group_key(tiny_run, 0), "other-worker", ttl=0.4)  # live on this host, heartbeating
    assert other.acquire()
    cfg = _write_cfg(tmp_path, _cfg(tiny_run, res, claim_ttl_s=1.5))
    try:
        capsys.readouterr()
        t0 = time.monotonic()
        rc = main(["sweep", cfg, "--quiet"])
        waited = time.monotonic() - t0
        out, err = capsys.readouterr()
        assert rc not in (0, None)
        line = err.strip()
        assert "\n" not in line and "Traceback" not in line
        assert "1 checkpoint group(s) (2 records)" in line and "re-run" in line
        assert "6 new records" in out
        assert waited >= 1.5  # it did wait for the holder (claim_ttl_s) before giving up
    finally:
        other.release()
    assert main(["sweep", cfg, "--quiet"]) == 0  # the holder is gone: a re-run finishes
    assert _computed(res) == _computed(clean_results)


def test_claim_of_a_silent_worker_on_another_host_is_taken_over_after_ttl(tiny_run, clean_results, tmp_path,
                                                                           capsys):
    """A fresh claim from another host (its pid cannot be checked) whose heartbeat stops: the sweep waits
    until it is older than claim_ttl_s, then takes it over, and finishes with everything done."""
    res = tmp_path / "res"
    (res / "claims").mkdir(parents=True)
    (res / "claims" / f"{_group_key(tiny_run, 0)}.000000.json").write_text(json.dumps(
        {"worker": "elsewhere:1:x", "host": "elsewhere.invalid", "pid": 1}))  # fresh now, never touched again
    capsys.readouterr()
    assert main(["sweep", _write_cfg(tmp_path, _cfg(tiny_run, res, claim_ttl_s=2)), "--quiet"]) == 0
    assert "8 new records" in capsys.readouterr().out
    assert _computed(res) == _computed(clean_results)


def test_group_finished_by_the_holder_meanwhile_counts_as_done(tiny_run, clean_results, tmp_path, capsys,
                                                               monkeypatch):
    res = tmp_path / "res"
    Store(res)
    other = Claim(res, _group_key(tiny_run, 0), "other-worker", ttl=0.4)
    assert other.acquire()
    first = load_first_group_records(clean_results, tiny_run)
    real = sweep_run.run_group

    def run_then_other_finishes(*a, **kw):  # the holder writes its records while this worker is busy
        real(*a, **kw)
        for p in first:
            if not (res / "records" / p.name).exists():
                shutil.copy2(p, res / "records" / p.name)
    monkeypatch.setattr(sweep_run, "run_group", run_then_other_finishes)
    try:
        capsys.readouterr()
        assert main(["sweep", _write_cfg(tmp_path, _cfg(tiny_run, res, claim_ttl_s=30)), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "6 new records" in out and "3 model loads" in out  # it did not redo the holder's group
    finally:
        other.release()
    assert _computed(res) == _computed(clean_results)


def load_first_group_records(clean_results: Path, tiny_run: Path) -> list[Path]:
    from qrobust.sources import load_source
    name = load_source(str(tiny_run)).checkpoints[0].name
    got = [p for p in (clean_results / "records").glob("*.json")
           if json.loads(p.read_text())["checkpoint"]["name"] == name]
    assert len(got) == 2
    return got


# ------------------------------------------------------------------------------------------------------
# 4: temporary leftovers of a kill are cleaned on the next run, never a live writer's
# ------------------------------------------------------------------------------------------------------
def _age(p: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_clean_removes_only_abandoned_temporaries(tmp_path):
    dead, me, here = _dead_pid(), os.getpid(), leftovers.host_tag()
    d = tmp_path / "res" / "records"
    d.mkdir(parents=True)
    gone = [d / f".k.json.p{dead}-{here}.abcd1234.tmp",  # this host, dead pid: at once
            d.parent / f".write-probe.p{dead}-{here}.x1x1x1x1",
            d.parent / "claims" / f".claim.p{dead}-{here}.x2x2x2x2",
            d / ".old.json.q1w2e3r4.tmp"]  # no tag (older qrobust), untouched for two days
    kept = [d / f".k.json.p{me}-{here}.abcd1234.tmp",  # this very (live) process
            d / f".k.json.p{dead}-0badc0de.abcd1234.tmp",  # another host, recent: maybe a live worker there
            d / ".new.json.q1w2e3r4.tmp",  # no tag, recent
            d / "k.json", d / "notes.tmp", d / ".notes.tmp", d / ".my.backup.tmp",  # not qrobust's names
            tmp_path / "res" / "mine" / f".k.json.p{dead}-{here}.abcd1234.tmp"]  # not a folder qrobust writes
    for p in gone + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for p in [gone[3]] + kept[-4:]:
        _age(p, 2 * 86400)
    ck = tmp_path / "res" / "averaged" / "run"
    dirs_gone = [ck / f".step-0000004.tmp-p{dead}-{here}-zzzzzzzz", ck / ".step-0000008.tmp-legacy12"]
    dirs_kept = [ck / f".step-0000012.tmp-p{me}-{here}-zzzzzzzz",
                 ck / f".step-0000016.tmp-p{dead}-0badc0de-zzzzzzzz"]
    for p in dirs_gone + dirs_kept:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "model.safetensors").write_text("half")
    for p in (dirs_gone[1], dirs_gone[1] / "sub", dirs_gone[1] / "sub" / "model.safetensors"):
        _age(p, 2 * 86400)
    # killed between atomic_dir's two renames: the previous version is the only whole copy: it comes back
    old = ck / f".step-0000020.old-p{dead}-{here}"
    old.mkdir()
    (old / "config.json").write_text("{}")
    removed = Store(tmp_path / "res").clean()
    assert sorted(map(str, removed)) == sorted(map(str, gone + dirs_gone + [old]))
    assert not any(p.exists() for p in gone + dirs_gone) and all(p.exists() for p in kept + dirs_kept)
    assert (ck / "step-0000020" / "config.json").is_file() and not old.exists()


_WRITER = """
import sys, time
from pathlib import Path
from qrobust.io.atomic import atomic_dir
from qrobust.io.atomic import write_text as atomic_write_text
with atomic_dir(Path(sys.argv[1]) / "step-0000099") as tmp:
    (tmp / "model.safetensors").write_bytes(b"0" * 1000)
    import os
    # stop inside the atomic writer, its temp file written, and say so
    os.replace = lambda a, b: (print("writing", flush=True), time.sleep(300))
    atomic_write_text(Path(sys.argv[1]) / "k.json", "{}")
"""


def test_kill_leaves_temporaries_that_the_next_run_removes_but_a_live_writer_keeps(tmp_path):
    root = tmp_path / "res"
    Store(root)
    killed = subprocess.Popen([sys.executable, "-c", _WRITER, str(root / "records")], stdout=subprocess.PIPE,
                              text=True)
    live = subprocess.Popen([sys.executable, "-c", _WRITER, str(root / "fp")], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "writing" and live.stdout.readline().strip() == "writing"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        left = sorted(p.name for p in (root / "records").iterdir())
        assert len(left) == 2 and all(n.startswith((".step-0000099.tmp-", ".k.json.")) for n in left), left
        live_files = sorted((root / "fp").iterdir())
        assert len(live_files) == 2
        Store(root).clean()
        assert list((root / "records").iterdir()) == []  # the killed writer's folder and file are gone
        assert sorted((root / "fp").iterdir()) == live_files  # the live writer's are untouched
    finally:
        live.kill()
        live.wait()
        if killed.poll() is None:
            killed.kill()


def test_sweep_cleans_leftovers_and_results_stay_identical(tiny_run, clean_results, tmp_path, capsys):
    res = tmp_path / "res"
    shutil.copytree(clean_results, res)
    before = {p.name: p.read_bytes() for p in (res / "records").glob("*.json")}
    dead, here = _dead_pid(), leftovers.host_tag()
    junk = [res / "records" / f".{next(iter(before))}.p{dead}-{here}.a1b2c3d4.tmp",
            res / "fp" / f".x.json.p{dead}-{here}.a1b2c3d4.tmp",
            res / f".write-probe.p{dead}-{here}.qqqqqqqq",
            res / "claims" / f".claim.p{dead}-{here}.qqqqqqqq"]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text('{"half')
    half = res / "averaged" / "main" / f".step-0000004.tmp-p{dead}-{here}-abcdefgh"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    capsys.readouterr()
    assert main(["sweep", _write_cfg(tmp_path, _cfg(tiny_run, res)), "--quiet"]) == 0
    assert "0 new records, 8 already done" in capsys.readouterr().out
    assert not any(p.exists() for p in junk) and not half.exists()
    assert {p.name: p.read_bytes() for p in (res / "records").glob("*.json")} == before


def test_train_resume_cleans_half_written_checkpoint_folders(tiny_run, tmp_path):
    from conftest import tiny_config
    from qrobust.config import TrainConfig, parse_config
    from qrobust.training.loop import train
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    train(parse_config(TrainConfig, tiny_config(out)), progress=False)  # nothing to do: the reference manifest
    manifest = (out / "trajectory.json").read_text()
    weights = {p: p.read_bytes() for p in (out / "checkpoints").rglob("model.safetensors")}
    dead, here = _dead_pid(), leftovers.host_tag()
    half = out / "checkpoints" / "main" / f".step-0000012.tmp-p{dead}-{here}-x9x9x9x9"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    legacy = out / "checkpoints" / "main" / ".step-0000004.tmp-oldname1"  # from an older qrobust: by age
    legacy.mkdir()
    _age(legacy, 3 * 86400)
    log_tmp = out / f".train_log.jsonl.p{dead}-{here}.zzzzzzzz.tmp"
    log_tmp.write_text("{")
    train(parse_config(TrainConfig, tiny_config(out)), progress=False)
    assert not half.exists() and not legacy.exists() and not log_tmp.exists()
    assert (out / "trajectory.json").read_text() == manifest
    assert {p: p.read_bytes() for p in (out / "checkpoints").rglob("model.safetensors")} == weights


# ------------------------------------------------------------------------------------------------------
# the other readers of a results folder: averaging's 'made already' mark, the reproduction index
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[1]", "{", "null"])
def test_damaged_averaging_mark_means_made_again_with_a_warning(tmp_path, text):
    from qrobust.averaging.averagers import AverageJob
    from qrobust.averaging.run import folder_of, is_made
    from qrobust.averaging.stream import PROVENANCE
    from qrobust.trajectory import Checkpoint
    ck = Checkpoint(name="main/step-1", path=str(tmp_path / "a"), step=1, run="main")
    job = AverageJob(run="main-lawa", step=1, inputs=[ck], weights=[1.0], like=ck)
    folder = folder_of(job, tmp_path / "avg")
    folder.mkdir(parents=True)
    (folder / PROVENANCE).write_text(text)
    with pytest.warns(QrobustWarning, match=PROVENANCE):
        assert is_made(job, tmp_path / "avg") is False


def test_reproduction_index_skips_damaged_verdicts(tmp_path):
    from qrobust.workflows.reproduction.page import write_index
    good = {"experiment": "good-exp", "finding": "f", "scale": "tiny", "created": "now",
            "claims": [{"status": "pass", "cell": "c", "claim": "x", "n_expected_direction": 1, "n": 1,
                        "n_for": 1, "n_against": 0}]}
    for name, text in {"good": json.dumps(good), "list": "[1]", "empty": "{}", "cut": '{"experi',
                       "claims": json.dumps({**good, "claims": [1]})}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "verdict.json").write_text(text)
    with pytest.warns(QrobustWarning) as got:
        page = write_index(tmp_path).read_text()
    assert "good-exp" in page
    assert sorted(Path(str(w.message).split("'")[1]).parent.name for w in got) == ["claims", "cut", "empty", "list"]
