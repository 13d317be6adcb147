"""Several workers on one results folder: claims, job arrays, concurrent processes, kill -9 at random points."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qrobust.cli import main
from qrobust.sweeps.executors.array import slurm_script
from qrobust.errors import ConfigError
from qrobust.sweeps import Store, sweep
from qrobust.sweeps.claims import Claim


def test_claim_is_exclusive_and_released(tmp_path):
    a, b = Claim(tmp_path, "k", "A", ttl=60), Claim(tmp_path, "k", "B", ttl=60)
    assert a.acquire() and a.held()
    assert not b.acquire() and not b.held()
    a.release()
    assert b.acquire() and b.held() and not a.held()
    b.release()


def test_racing_workers_get_one_winner_each_round(tmp_path):
    for rnd in range(30):
        claims = [Claim(tmp_path, f"k{rnd}", f"w{i}", ttl=60) for i in range(4)]
        wins = []
        barrier = threading.Barrier(len(claims))

        def go(c):
            barrier.wait()
            if c.acquire():
                wins.append(c.worker)
        ts = [threading.Thread(target=go, args=(c,)) for c in claims]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(wins) == 1, (rnd, wins)
        for c in claims:
            c.release()


def _foreign_claim(root: Path, key: str, host: str, pid: int, age: float) -> Path:
    d = root / "claims"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{key}.000000.json"
    p.write_text(json.dumps({"worker": f"{host}:{pid}:x", "host": host, "pid": pid}))
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def test_stale_claims_are_taken_over(tmp_path):
    _foreign_claim(tmp_path, "fresh", "elsewhere", 1, age=1)
    assert not Claim(tmp_path, "fresh", "me", ttl=60).acquire()  # alive, somewhere else
    _foreign_claim(tmp_path, "old", "elsewhere", 1, age=120)
    c = Claim(tmp_path, "old", "me", ttl=60)
    assert c.acquire() and c.path.name == "old.000001.json"  # next generation; the old one is gone
    assert not (tmp_path / "claims" / "old.000000.json").exists()
    c.release()
    import socket
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _foreign_claim(tmp_path, "dead", socket.gethostname(), dead.pid, age=0)
    assert Claim(tmp_path, "dead", "me", ttl=600).acquire()  # its process is gone: no need to wait ttl


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    a = Claim(tmp_path, "k", "A", ttl=0.4)
    assert a.acquire()
    time.sleep(1.0)  # > ttl: only the heartbeat keeps it from going stale
    assert not Claim(tmp_path, "k", "B", ttl=0.4).acquire()
    a.release()


def _cfg(tiny_run, out, **kw):
    return {"trajectory": str(tiny_run), "out": str(out), "bits": [3, 4], "group_sizes": [16],
            "eval": {"n_blocks": 6, "batch_size": 4}, **kw}


def _metrics(root: Path) -> dict[str, dict]:
    return {r.key: r.metrics for r in Store(root, create=False).records()}


def test_job_array_splits_checkpoints(tiny_run, tmp_path):
    a = sweep(_cfg(tiny_run, tmp_path / "res"), progress=False, array_index=0, array_count=2)
    b = sweep(_cfg(tiny_run, tmp_path / "res"), progress=False, array_index=1, array_count=2)
    assert (a.model_loads, b.model_loads) == (2, 2) and a.records_written + b.records_written == 8
    clean = tmp_path / "clean"
    sweep(_cfg(tiny_run, clean), progress=False)
    assert _metrics(tmp_path / "res") == _metrics(clean)
    with pytest.raises(ConfigError, match="job array"):
        sweep(_cfg(tiny_run, tmp_path / "x"), progress=False, array_index=2, array_count=2)


def test_slurm_env_and_script(tiny_run, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(json.dumps(_cfg(tiny_run, tmp_path / "res")))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "11")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    assert "array task 1 of 2" in capsys.readouterr().out
    assert len(list((tmp_path / "res" / "records").glob("*.json"))) == 4  # checkpoints 1 and 3
    script = slurm_script(str(cfg), 3, None, 4, ["time=01:00:00"])
    assert "#SBATCH --array=0-2" in script and "#SBATCH --time=01:00:00" in script
    assert "--array-count 3" in script and "--threads 4" in script
    assert main(["sweep", str(cfg), "--emit-slurm"]) == 2  # needs --array-count
    assert "--array-count" in capsys.readouterr().err


_WORKER = """
import json, sys
from qrobust.sweeps import sweep
s = sweep(json.loads(sys.argv[1]), progress=False)
print(json.dumps({"fp": s.fp_evals, "loads": s.model_loads, "written": s.records_written,
                  "elsewhere": s.claimed_elsewhere}))
"""


def _spawn(cfg: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_concurrent_workers_do_each_checkpoint_once(tiny_run, tmp_path):
    cfg = _cfg(tiny_run, tmp_path / "res", methods=["rtn", {"name": "gptq", "profile": "reference"}],
               calibration={"n_samples": 16})
    procs = [_spawn(cfg) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["fp"] for o in outs) == 4 and sum(o["loads"] for o in outs) == 4  # each checkpoint once
    assert sum(o["written"] for o in outs) == 16
    clean = tmp_path / "clean"
    sweep({**cfg, "out": str(clean)}, progress=False)
    assert _metrics(tmp_path / "res") == _metrics(clean)
    assert not list((tmp_path / "res" / "claims").glob("*.json"))  # all released


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tiny_run, tmp_path):
    cfg = _cfg(tiny_run, tmp_path / "res", methods=["rtn", {"name": "gptq", "profile": "reference"}],
               calibration={"n_samples": 16})
    rng = random.Random(0)
    records = tmp_path / "res" / "records"
    kills = 0
    for _ in range(5):
        # kill at a random moment of the work itself (after 1-3 new records plus up to 0.5 s), not at a
        # wall time: how long start-up takes varies too much between machines
        n0 = len(list(records.glob("*.json"))) if records.is_dir() else 0
        target, extra = n0 + rng.randint(1, 3), rng.uniform(0.0, 0.5)
        p = _spawn(cfg)
        while p.poll() is None and (len(list(records.glob("*.json"))) if records.is_dir() else 0) < target:
            time.sleep(0.02)
        time.sleep(extra)
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        for f in records.glob("*.json"):
            json.loads(f.read_text())  # every record that exists is whole
    p = _spawn(cfg)  # the restart takes over the dead workers' claims at once (same host, dead pid)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert kills >= 1
    clean = tmp_path / "clean"
    sweep({**cfg, "out": str(clean)}, progress=False)
    assert _metrics(tmp_path / "res") == _metrics(clean)


def test_results_export_parquet(tiny_run, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    sweep(_cfg(tiny_run, tmp_path / "res"), progress=False)
    out = tmp_path / "r.parquet"
    assert main(["results", str(tmp_path / "res"), "--format", "parquet", "--out", str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    rows = Store(tmp_path / "res", create=False).rows()
    assert len(table) == 8 and sorted(r["metrics.dq_rel"] for r in table) == sorted(r["metrics.dq_rel"] for r in rows)
    assert main(["results", str(tmp_path / "res"), "--format", "parquet"]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_executor_matches_local(tiny_run, tmp_path):
    pytest.importorskip("ray")
    from qrobust.api import sweep as api_sweep
    s = api_sweep(_cfg(tiny_run, tmp_path / "ray"), progress=False, executor="ray", cpus_per_task=1)
    assert s.checkpoints == 4 and s.model_loads == 4 and s.fp_evals == 4 and s.records_written == 8
    sweep(_cfg(tiny_run, tmp_path / "local"), progress=False)
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local")
    again = api_sweep(_cfg(tiny_run, tmp_path / "ray"), progress=False, executor="ray")
    assert again.records_written == 0 and again.records_skipped == 8 and again.model_loads == 0


def test_store_opening_races_are_harmless(tmp_path):
    """Workers opening one results folder at once: each write probe is private (a shared name made one
    worker's unlink fail when another had removed it first)."""
    errors = []

    def open_store():
        try:
            for _ in range(50):
                Store(tmp_path / "res")
        except Exception as e:  # pragma: no cover - the failure being tested against
            errors.append(e)
    ts = [threading.Thread(target=open_store) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
