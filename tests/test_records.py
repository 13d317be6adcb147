"""Typed records: every kind round-trips (parse(to_dict) == record, to_dict == the stored JSON), the flat
columns equal a dotted lookup written out here, damaged fields make the store skip the file with one warning
naming it, a newer schema is refused with the reason, and the migrations table is what reads an old schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qrobust.errors import QrobustWarning
from qrobust.results import schema
from qrobust.results.records import (COLUMNS, KINDS, FPRecord, RecordError, Subject, VariantRecord, parse)
from qrobust.results.store import Store
from qrobust.trajectory import Checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"


@pytest.fixture
def store(store_v1: Path) -> Path:
    return store_v1


def _json(kind: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((FIXTURE / kind).glob("*.json"))}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_round_trips(kind):
    files = _json(kind)
    assert files, f"the fixture has no {kind} records"
    for key, d in files.items():
        rec = parse(kind, d, key)
        assert type(rec) is KINDS[kind] and rec.key == key
        assert rec.to_dict() == d  # nothing lost, nothing added
        assert parse(kind, rec.to_dict(), key) == rec
        assert rec.checkpoint.name == d["checkpoint"]["name"] and rec.checkpoint.step == d["checkpoint"]["step"]


def test_typed_fields_hold_the_stored_values():
    for key, d in _json("records").items():
        r = parse("records", d, key)
        assert isinstance(r, VariantRecord)
        assert r.metrics.dq_rel == d["metrics"]["dq_rel"] and r.metrics.dq_ci.low == d["metrics"]["dq_ci"]["low"]
        assert r.blocks.nll_q == d["blocks"]["nll_q"] and r.variant.label == d["variant"]["label"]
        assert r.eval_set.id == d["eval_set"]["id"] and r.trajectory == d["trajectory"]
    for key, d in _json("fp").items():
        fp = parse("fp", d, key)
        assert isinstance(fp, FPRecord)
        assert fp.loss == d["loss"] and fp.block_nll == d["block_nll"] and fp.seconds == d["seconds"]


def _dotted(d: dict, path: str):
    """The old flat-column reader, written out: a missing part (or a non-object on the way) is None."""
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def test_row_equals_the_dotted_columns(store):
    s = Store(store, create=False)
    s.put("sparse", {"trajectory": "B", "metrics": {"loss_fp": 1.0}})  # a hand-made record: empty cells
    rows = {r["key"]: r for r in s.rows()}
    assert len(rows) == len(_json("records")) + 1
    for key, d in {**_json("records"), "sparse": json.loads((store / "records" / "sparse.json").read_text())}.items():
        assert list(rows[key]) == COLUMNS
        assert rows[key] == {c: _dotted(d, c) for c in COLUMNS}, key


def test_built_record_is_the_json_the_store_writes(tmp_path):
    from qrobust.evaluate import LossResult
    ck = Checkpoint(name="main/step-1", path="/x", step=1, tokens=64, run="main")

    class Blocks:  # the two EvalSet attributes a record stores
        id, info = "ev", {"n_tokens": 8, "n_blocks": 2}

    fp = FPRecord.new("k1", ck, Blocks(), LossResult(loss=2.0, n_tokens=8, block_sums=[7.5, 8.5], tokens_per_block=4,
                                                     seconds=0.25))
    assert fp.to_dict() == {"checkpoint": ck.to_dict(), "eval_set": {"id": "ev", "n_tokens": 8, "n_blocks": 2},
                            "loss": 2.0, "n_tokens": 8, "block_nll": [7.5, 8.5], "seconds": 0.25,
                            "schema": schema.SCHEMA, "key": "k1"}
    s = Store(tmp_path / "res")
    s.put(fp)  # a typed record brings its own key and kind
    got = s.get("k1", kind="fp")
    assert got == fp and got.loss == 2.0
    stored = json.loads((tmp_path / "res" / "fp" / "k1.json").read_text())
    assert {k: v for k, v in stored.items() if k not in ("created", "host", "versions")} == fp.to_dict()
    assert Subject("T", ck, {"name": ck.name}).fields() == {"trajectory": "T", "checkpoint": ck.to_dict(),
                                                            "checkpoint_id": {"name": "main/step-1"}}


@pytest.mark.parametrize("field,value,why", [
    ("metrics", 3, "'metrics' is not an object"),
    ("checkpoint", {"name": "main/step-4", "step": "4"}, "'checkpoint.step' is not an integer"),
])
def test_a_damaged_field_is_skipped_with_one_warning_naming_the_file(store, field, value, why):
    key, d = next(iter(_json("records").items()))
    (store / "records" / f"{key}.json").write_text(json.dumps({**d, field: value}))
    s = Store(store, create=False)
    with pytest.warns(QrobustWarning) as caught:
        keys = {r.key for r in s.records()}
        s.records()  # reported once per store
    assert key not in keys and len(keys) == len(_json("records")) - 1
    assert not s.has(key)  # missing, so a sweep recomputes it (tests/test_plan.py)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and f"{key}.json" in msgs[0] and why in msgs[0] and "recomputes" in msgs[0]


def test_a_newer_schema_is_refused_with_the_reason(store):
    key, d = next(iter(_json("records").items()))
    newer = {**d, "schema": "qrobust.record/99"}
    with pytest.raises(RecordError, match="newer qrobust.*qrobust.record/99.*upgrade qrobust"):
        parse("records", newer, key)
    (store / "records" / f"{key}.json").write_text(json.dumps(newer))
    with pytest.warns(QrobustWarning, match="newer qrobust"):
        assert Store(store, create=False).get(key) is None


def test_an_old_schema_is_read_through_its_registered_migration(store, monkeypatch):
    key, d = next(iter(_json("records").items()))
    old = {k: v for k, v in d.items() if k != "metrics"}
    old.update({"schema": "qrobust.record/0", "loss": d["metrics"]})  # a made-up older layout
    (store / "records" / f"{key}.json").write_text(json.dumps(old))
    with pytest.warns(QrobustWarning, match="qrobust.record/0.*no migration"):
        assert Store(store, create=False).get(key) is None  # not registered: skipped, with the reason

    monkeypatch.setitem(schema.MIGRATIONS, "qrobust.record/0", None)  # restored after the test
    lifted = []

    @schema.register_migration("qrobust.record/0")
    def lift0(x: dict) -> dict:
        lifted.append(x["key"])
        return {**{k: v for k, v in x.items() if k != "loss"}, "metrics": x["loss"], "schema": schema.SCHEMA}

    rec = Store(store, create=False).get(key)
    assert lifted == [key]
    assert isinstance(rec, VariantRecord) and rec.metrics.dq_rel == d["metrics"]["dq_rel"]


def test_unknown_kind_and_non_object():
    with pytest.raises(RecordError, match="not a JSON object"):
        parse("records", [1, 2])
    with pytest.raises(RecordError, match="unknown record kind 'nope'; known: fp, geometry, records"):
        parse("nope", {"schema": schema.SCHEMA, "key": "k"})
