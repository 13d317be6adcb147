"""The numbers do not move: today's code reproduces the snapshot stored in tests/snapshots/ before issue 16's
restructuring, exactly (record keys, metrics, per-block NLLs, the demo's printed table, verdicts, the
export's losses and tensor bytes). CPU results are bit-identical for the same config and seed on one machine
kind, so numbers are compared with ==. Float kernels differ in the last bits across CPU microarchitectures (an
AMD EPYC with AVX-512 trains the demo to other bits, FP losses equal to 4 decimals), so a machine kind whose bits
differ keeps its own snapshot under tests/snapshots/machines/<cpu>-<isa>/, made from the same inputs; the files
beside it stay the reference for every other kind. The snapshot is made by tests/snapshots/make_snapshots.py, which these tests import:
one producer. Regenerate it ONLY for a change meant to move numbers."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

SNAP_DIR = Path(__file__).resolve().parent / "snapshots"
_spec = importlib.util.spec_from_file_location("make_snapshots", SNAP_DIR / "make_snapshots.py")
snap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snap)


def _check(name: str, tmp_path: Path) -> None:
    stored = snap.load(name)
    now = snap.produce(name, tmp_path, stored["inputs"])  # the stored inputs: later edits to conftest don't matter
    diff = snap.first_difference(stored, now)
    assert diff is None, (f"{name}: the numbers moved: {diff} (if the change is MEANT to move numbers, "
                          f"regenerate: python tests/snapshots/make_snapshots.py --only {name})")


def test_demo_quick_does_not_move(tmp_path):
    _check("demo_quick", tmp_path)


def test_streamed_sweep_does_not_move(tmp_path):
    _check("streamed_sweep", tmp_path)


@pytest.mark.slow
def test_reproduce_does_not_move(tmp_path):
    _check("reproduce", tmp_path)


def test_export_round_trip_does_not_move(tmp_path):
    pytest.importorskip("compressed_tensors", reason="export needs compressed-tensors (pip install 'qrobust[export]')")
    _check("export", tmp_path)


def test_the_snapshot_holds_what_it_promises():
    """Every snapshot is there, small, and about results (no timings, hosts or absolute work paths)."""
    files = [snap.path_of(n) for n in snap.SNAPSHOTS]
    assert sum(f.stat().st_size for f in files) < 1_000_000
    demo = snap.load("demo_quick")
    assert len([k for k in demo["records"] if k.startswith("records/")]) == 30  # 5 checkpoints x 2 methods x 3 bits
    assert any("ΔQL decay" in line for line in demo["printed"])
    rep = snap.load("reproduce")
    assert rep["verdicts"] and all(v["claims"] for v in rep["verdicts"].values())
    text = "".join(f.read_text() for f in files)
    for word in ('"timings"', '"host"', '"created"', '"versions"', "/tmp/"):
        assert word not in text


def _a_record(data: dict) -> tuple[str, dict]:
    key = sorted(k for k in data["records"] if k.startswith("records/"))[0]
    return key, data["records"][key]


def test_a_moved_number_is_named_by_its_record_and_field():
    stored = snap.load("demo_quick")
    assert snap.first_difference(stored, copy.deepcopy(stored)) is None
    key, rec = _a_record(stored)

    moved = copy.deepcopy(stored)
    dq = rec["metrics"]["dq_rel"]
    _a_record(moved)[1]["metrics"]["dq_rel"] = math.nextafter(dq, math.inf)  # one ulp
    diff = snap.first_difference(stored, moved)
    assert diff == f"records.{key}.metrics.dq_rel: snapshot {dq!r} != now {math.nextafter(dq, math.inf)!r}"

    moved = copy.deepcopy(stored)
    _a_record(moved)[1]["blocks"]["nll_q"][1] += 1e-9
    assert snap.first_difference(stored, moved).startswith(f"records.{key}.blocks.nll_q[1]: snapshot ")

    moved = copy.deepcopy(stored)
    del moved["records"][key]
    assert snap.first_difference(stored, moved).startswith(f"records.{key}: in the snapshot (")

    moved = copy.deepcopy(stored)
    _a_record(moved)[1]["checkpoint"]["step"] = float(rec["checkpoint"]["step"])  # 40.0 == 40, but not the same
    assert snap.first_difference(stored, moved).startswith(f"records.{key}.checkpoint.step: snapshot ")

    row = next(i for i, line in enumerate(stored["printed"]) if "%" in line)  # the table's first row
    moved = copy.deepcopy(stored)
    moved["printed"][row] = moved["printed"][row].replace("%", "5%", 1)
    assert snap.first_difference(stored, moved).startswith(f"printed[{row}]: snapshot ")


def test_long_lists_are_stored_by_digest_and_paths_relative(tmp_path):
    xs = [0.1 * i for i in range(snap.LIST_MAX + 1)]
    got = snap.normalize({"nll": xs, "path": str(tmp_path / "a"), "timings": {"eval_s": 1.0}, "n": [1, 2]}, tmp_path)
    assert got["nll"] == {"n": len(xs), "fsum": math.fsum(xs), "sha256": got["nll"]["sha256"]}
    assert got["path"] == "$OUT/a" and "timings" not in got and got["n"] == [1, 2]
    ys = list(xs)
    ys[3] = math.nextafter(ys[3], 1.0)
    assert snap.normalize(ys, tmp_path)["sha256"] != got["nll"]["sha256"]
    assert json.loads(json.dumps(got)) == got
