"""Stores written before issue 16 (schema ``qrobust.record/1``) stay readable: a stored results folder
(tests/fixtures/store_v1, made by tests/fixtures/make_store_v1.py) is read through the public surface and
checked against facts derived independently, with the json module and the key formula written out here.

The fixture holds no checkpoints: its paths point at a deleted temporary folder, so nothing here may need them.
Every test reads a copy in tmp_path; tests/fixtures is never written."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from pathlib import Path

import pytest

from qrobust.cli import main
from qrobust.results.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
KINDS = ("records", "fp", "geometry", "tasks", "tasks_fp")
VARIANTS = {"rtn-w2g16", "gptq-w2g16"}
# main 4, 8, 12; its cooldown branch decay8 12; LAWA(2) of main at 8, 12
CHECKPOINTS = {"main/step-0000004", "main/step-0000008", "main/step-0000012", "decay8/step-0000012",
               "main-lawa2/step-0000008", "main-lawa2/step-0000012"}


def _files(root: Path, kind: str) -> dict[str, dict]:
    """The independent reader: every JSON file of ``kind``, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / kind).glob("*.json"))}


def _key(parts: dict) -> str:
    """The v1 record key, written out (sha1 of the sorted compact JSON, 20 hex digits)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def _no_variant_label(v: dict) -> dict:
    return {k: x for k, x in v.items() if k != "label"}


def _tasks_identity(t: dict) -> dict:
    return {k: x for k, x in t.items() if not (k == "backend" and x == "hf")}


def test_fixture_is_small_complete_and_without_checkpoints() -> None:
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 1_000_000
    assert sorted(p.name for p in FIXTURE.iterdir()) == sorted((*KINDS, "trajectories", "configs"))
    counts = {k: len(list((FIXTURE / k).glob("*.json"))) for k in KINDS}
    assert counts == {"records": 12, "fp": 6, "geometry": 6, "tasks": 12, "tasks_fp": 6}
    recs = _files(FIXTURE, "records").values()
    assert not any(Path(r["checkpoint"]["path"]).exists() for r in recs)  # nothing below may need them


def test_results_csv_matches_the_json_files(store_v1: Path, capsys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["results", str(store_v1), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "skipped" not in err
    rows = list(csv.DictReader(io.StringIO(out)))
    files = _files(store_v1, "records")
    assert sorted(r["key"] for r in rows) == sorted(files)  # one row per record file
    for row in rows:
        m = files[row["key"]]["metrics"]
        loss_fp, loss_q, dq = float(row["metrics.loss_fp"]), float(row["metrics.loss_q"]), float(row["metrics.dq_rel"])
        assert (loss_fp, loss_q, dq) == (m["loss_fp"], m["loss_q"], m["dq_rel"])  # CSV keeps full precision
        assert dq == pytest.approx(loss_q / loss_fp - 1, abs=1e-12)
        assert row["checkpoint.name"] == files[row["key"]]["checkpoint"]["name"]
        assert row["checkpoint.name"] == f'{row["checkpoint.run"]}/step-{int(row["checkpoint.step"]):07d}'
    assert {r["checkpoint.name"] for r in rows} == CHECKPOINTS
    assert {f'{r["variant.method"]}-w{r["variant.bits"]}g{r["variant.group_size"]}' for r in rows} == VARIANTS


def test_store_reads_every_kind(store_v1: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file of the fixture may be skipped as invalid
        store = Store(store_v1, create=False)
        got = {"records": store.records(), "geometry": store.geometry(), "tasks": store.side_records("tasks"),
               "fp": store.side_records("fp"), "tasks_fp": store.side_records("tasks_fp")}
        trajs, configs = store.trajectories(), store.configs()
    for kind, recs in got.items():
        assert {r.key: r.to_dict() for r in recs} == _files(store_v1, kind), kind
    # the typed fields say what the stored JSON says
    for r in got["records"]:
        raw = r.to_dict()
        assert (r.metrics.dq_rel, r.metrics.loss_fp, r.variant.label, r.checkpoint.step, r.eval_set.id) == (
            raw["metrics"]["dq_rel"], raw["metrics"]["loss_fp"], raw["variant"]["label"], raw["checkpoint"]["step"],
            raw["eval_set"]["id"])
        assert (r.metrics.dq_ci.low, r.metrics.dq_ci.high) == (raw["metrics"]["dq_ci"]["low"],
                                                               raw["metrics"]["dq_ci"]["high"])
        assert r.blocks.nll_fp == raw["blocks"]["nll_fp"] and r.weight_error.rel_err_mean == raw["weight_error"]["rel_err_mean"]
    for r in got["fp"]:
        assert (r.loss, r.block_nll) == (r.to_dict()["loss"], r.to_dict()["block_nll"])
    assert [(r.checkpoint.run, r.checkpoint.step) for r in got["records"]] == sorted(
        (r.checkpoint.run, r.checkpoint.step) for r in got["records"])
    assert {r.checkpoint.name for r in got["geometry"]} == CHECKPOINTS
    assert all(r.geometry.lambda_max > 0 for r in got["geometry"])
    assert {r.variant.label for r in got["tasks"]} == VARIANTS
    for r in got["tasks"]:
        for d in r.drop.values():
            assert d["delta"] == pytest.approx(d["acc_q"] - d["acc_fp"])
    assert trajs == {"t": json.loads((store_v1 / "trajectories" / "t.json").read_text())}
    assert set(trajs["t"]["runs"]) == {"main", "decay8", "main-lawa2"}
    assert configs == [json.loads(p.read_text()) for p in (store_v1 / "configs").glob("sweep-*.json")]
    assert len(configs) == 1 and configs[0]["bits"] == [2] and configs[0]["methods"] == ["rtn", "gptq"]


def test_report_writes_every_figure(store_v1: Path, capsys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["report", str(store_v1)]) == 0
    err = capsys.readouterr().err
    assert "skipped" not in err and "warning" not in err.lower()
    # one trajectory 't', two variants; averaged runs (LAWA), a cooldown branch, geometry without per-layer
    # sharpness, and downstream tasks present
    per_variant = ("dq", "averaging", "dq_vs_geometry", "tasks")
    want = {f"{f}_t_{v}.png" for f in per_variant for v in VARIANTS}
    want |= {"loss_t.png", "stable_vs_decay_t.png", "geometry_t.png", "index.html"}
    report = store_v1 / "report"
    assert {p.name for p in report.iterdir()} == want
    assert all((report / n).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for n in want if n.endswith(".png"))
    page = (report / "index.html").read_text()
    assert all(f'id="{n[:-4]}"' in page for n in want if n.endswith(".png"))


def test_keys_follow_from_the_stored_fields(store_v1: Path) -> None:
    """A re-run would find everything done when every file's key is what the sweep computes from the
    checkpoint identity, variant, calibration, eval set, geometry and task settings that the records store
    (the checkpoint fingerprints themselves need the weights, so they are taken as stored)."""
    (cfg,) = _files(store_v1, "configs").values()
    recs, tasks = _files(store_v1, "records"), _files(store_v1, "tasks")
    ident = {r["checkpoint"]["name"]: r["checkpoint_id"] for r in recs.values()}
    assert set(ident) == CHECKPOINTS
    for key, r in recs.items():
        calib = None if r["calibration"] is None else cfg["calibration"]
        assert (r["calibration"] is None) == (r["variant"]["method"] == "rtn")
        assert key == r["key"] == _key({"checkpoint": r["checkpoint_id"], "variant": _no_variant_label(r["variant"]),
                                        "calibration": calib, "eval": r["eval_set"]["id"]})
    for key, r in _files(store_v1, "fp").items():
        assert key == r["key"] == _key({"checkpoint": ident[r["checkpoint"]["name"]], "eval": r["eval_set"]["id"]})
    for key, r in _files(store_v1, "geometry").items():
        assert r["geometry"]["config"] == cfg["geometry"]
        assert key == r["key"] == _key({"checkpoint": r["checkpoint_id"], "geometry": cfg["geometry"],
                                        "eval": r["eval_set"]["id"]})
    assert {t["tasks_config"]["backend"] for t in tasks.values()} == {"hf"}  # identity drops the default
    for key, r in tasks.items():
        calib = None if r["variant"]["method"] == "rtn" else cfg["calibration"]
        assert key == r["key"] == _key({"checkpoint": r["checkpoint_id"], "variant": _no_variant_label(r["variant"]),
                                        "calibration": calib, "tasks": _tasks_identity(r["tasks_config"])})
    for key, r in _files(store_v1, "tasks_fp").items():
        assert key == r["key"] == _key({"checkpoint": ident[r["checkpoint"]["name"]],
                                        "tasks": _tasks_identity(cfg["tasks"])})


def test_key_formula_is_todays(store_v1: Path) -> None:
    """The written-out formula above is the store's own (so the key test checks what a re-run computes)."""
    from qrobust.results.store import record_key
    r = next(iter(_files(store_v1, "records").values()))
    parts = {"checkpoint": r["checkpoint_id"], "eval": r["eval_set"]["id"]}
    assert record_key(parts) == _key(parts)
