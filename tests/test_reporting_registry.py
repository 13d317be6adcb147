"""Figure kinds as a registry, and the report reading typed records: a new kind registered from outside is drawn
and listed in the page, kinds whose records are absent are skipped, unknown names are one-line errors, and plain
dicts, typed records and the stored JSON all give the same figures and intervals."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from matplotlib.figure import Figure

from qrobust.errors import QrobustError
from qrobust.quant.registry import QuantSpec
from qrobust.reporting import FigureOut, GroupInputs, make_figures, register_figure, write_report
from qrobust.reporting.groups import interval_of
from qrobust.results.records import variant_records
from qrobust.reporting.registry import FIGURE_KINDS, FigureKindError
from qrobust.reporting.style import save_figure
from qrobust.reporting.variants import variant_slug
from qrobust.results.records import GeometryRecord, VariantRecord
from qrobust.results.store import Store
from qrobust.stats import dq_interval



@pytest.fixture
def store(store_v1: Path) -> Path:
    return store_v1


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by a test are removed afterwards, so other tests see only the built-in kinds."""
    names: list[str] = []
    yield names
    for n in names:
        FIGURE_KINDS.pop(n, None)


def _stored(root: Path, kind: str = "records") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / kind).glob("*.json"))]


def test_a_kind_registered_from_outside_is_drawn_and_listed(store: Path, registered: list[str]) -> None:
    seen: list[int] = []

    @register_figure("variant_count")
    def variant_count(inputs: GroupInputs) -> list[FigureOut]:
        seen.append(len(inputs.variants))
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().bar(range(len(inputs.variants)), [len(v.recs) for v in inputs.variants])
        path = inputs.path("variant_count")
        return [FigureOut(path, "variant_count", inputs.group.traj, "records per variant",
                          f"{len(inputs.variants)} variants", "variant", save_figure(fig, path))]
    registered.append("variant_count")

    index = write_report(store)
    page = index.read_text()
    labels = {r["variant"]["label"] for r in _stored(store)}  # from the JSON, not through the reporting code
    assert seen == [len(labels)]
    assert (index.parent / "variant_count_t.png").read_bytes().startswith(b"\x89PNG")
    assert 'id="variant_count_t"' in page and f"{len(labels)} variants" in page
    assert f"<li>Figures: {len(list(index.parent.glob('*.png')))}</li>" in page
    assert page.index('id="tasks_t_') < page.index('id="variant_count_t"')  # registration order: after built-ins


def test_a_kind_is_skipped_when_the_records_it_needs_are_absent(store: Path, registered: list[str]) -> None:
    calls: list[str] = []

    @register_figure("needs_geometry", needs=("records", "geometry"))
    def needs_geometry(inputs: GroupInputs) -> list[FigureOut]:
        calls.append(inputs.group.traj)
        return []
    registered.append("needs_geometry")

    s = Store(store, create=False)
    make_figures(s.records(), s.trajectories(), store / "out", s.geometry(), kinds={"needs_geometry"})
    assert calls == ["t"]
    make_figures(s.records(), s.trajectories(), store / "out", [], kinds={"needs_geometry"})
    assert calls == ["t"]  # not called again: no geometry records
    other = [{**r.to_dict(), "trajectory": "other"} for r in s.geometry()]  # another trajectory's geometry
    make_figures(s.records(), s.trajectories(), store / "out", other, kinds={"needs_geometry"})
    assert calls == ["t"]


def test_unknown_kinds_and_needs_are_one_line_errors(store: Path, tmp_path: Path) -> None:
    s = Store(store, create=False)
    with pytest.raises(FigureKindError) as e:
        make_figures(s.records(), s.trajectories(), tmp_path, kinds={"dq", "no_such_kind"})
    msg = str(e.value)
    assert isinstance(e.value, QrobustError) and "\n" not in msg and "'no_such_kind'" in msg
    assert all(name in msg for name in ("dq", "loss", "averaging", "stable_vs_decay", "geometry", "tasks"))
    with pytest.raises(FigureKindError, match="unknown record kind"):
        register_figure("bad", needs=("weights",))
    assert "bad" not in FIGURE_KINDS


def test_kinds_choose_what_is_drawn(store: Path, tmp_path: Path) -> None:
    s = Store(store, create=False)
    labels = sorted({variant_slug(r) for r in s.records()})
    figs = make_figures(s.records(), s.trajectories(), tmp_path, s.geometry(), s.side_records("tasks"),
                        kinds={"dq", "loss"})
    assert [f.path.name for f in figs] == [f"dq_t_{lab}.png" for lab in labels] + ["loss_t.png"]
    assert [f.kind for f in figs] == ["dq"] * len(labels) + ["loss"]


def test_plain_dicts_and_typed_records_draw_the_same(store: Path, tmp_path: Path) -> None:
    s = Store(store, create=False)
    kinds = {"dq", "geometry", "dq_vs_geometry", "tasks"}
    typed = make_figures(s.records(), s.trajectories(), tmp_path / "typed", s.geometry(), s.side_records("tasks"),
                         kinds=kinds)
    plain = make_figures([r.to_dict() for r in s.records()], s.trajectories(), tmp_path / "plain",
                         [r.to_dict() for r in s.geometry()], [r.to_dict() for r in s.side_records("tasks")],
                         kinds=kinds)
    assert len(typed) == 7
    assert [(f.path.name, f.title, f.caption, f.png) for f in typed] == [
        (f.path.name, f.title, f.caption, f.png) for f in plain]


def test_intervals_are_the_stored_ones_or_computed_from_the_blocks(store: Path) -> None:
    raw = _stored(store)
    for d in raw:
        ci = d["metrics"]["dq_ci"]
        assert interval_of(VariantRecord.parse(d)) == (ci["low"], ci["high"])
        del d["metrics"]["dq_ci"]
        want = dq_interval(d["blocks"]["nll_fp"], d["blocks"]["nll_q"])
        assert interval_of(VariantRecord.parse(d)) == (want["low"], want["high"])
        d["blocks"] = {}
        assert interval_of(VariantRecord.parse(d)) is None


def test_figure_names_use_the_one_variant_spelling() -> None:
    for spec in (QuantSpec("rtn", 4, -1), QuantSpec("gptq", 3, 128, sym=False)):
        (rec,) = variant_records([{"checkpoint": {"step": 1}, "variant": spec.to_dict()}])
        assert variant_slug(rec) == spec.label  # rtn-w4ch, gptq-w3g128-asym


def test_typed_fields_the_report_reads(store: Path) -> None:
    for d in _stored(store):
        r = VariantRecord.parse(d)
        assert (r.created, r.host, dict(r.versions)) == (d["created"], d["host"], d["versions"])
    geo = _stored(store, "geometry")[0]
    assert GeometryRecord.parse(geo).geometry.layers == {}
    geo["geometry"]["layers"] = {"layers.0.mlp": {"values": [2.5]}}
    assert GeometryRecord.parse(geo).geometry.layers == {"layers.0.mlp": {"values": [2.5]}}
