"""The report: figures and a self-contained HTML page from a synthetic results store (no training)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from qrobust.reporting import write_report
from qrobust.reporting.dq import dq_rel
from qrobust.reporting.groups import group_records, run_label, series
from qrobust.reporting.stable_vs_decay import cooldown_pairs
from qrobust.reporting.variants import Variant
from qrobust.results.store import Store
from qrobust.trajectory import Checkpoint, Trajectory

PNG_SIG = b"\x89PNG\r\n\x1a\n"
TPS = 2048  # tokens per step
IMG = '<img src="data:image/png;base64,'


def _record(traj: str, run: str, step: int, bits: int, dq_bp: int | None, *, tokens: bool = True,
            parent_step: int | None = None, loss_fp: float = 4.0) -> dict:
    """One record; ΔQ L given in hundredths of a percent (basis points) so expected strings are exact."""
    dq = None if dq_bp is None else dq_bp / 10000
    metrics = {} if dq is None else {"loss_fp": loss_fp, "loss_q": loss_fp * (1 + dq), "dq_rel": dq,
                                     "dq_abs": loss_fp * dq, "ppl_fp": math.exp(loss_fp),
                                     "ppl_q": math.exp(loss_fp * (1 + dq))}
    return {
        "trajectory": traj,
        "checkpoint": {"name": f"{run}/step-{step:07d}", "path": "/x", "step": step,
                       "tokens": step * TPS if tokens else None, "lr": 0.003 if tokens else None,
                       "phase": ("decay" if run != "main" else "stable") if tokens else None, "run": run,
                       "parent": "main" if run != "main" else None, "parent_step": parent_step},
        "variant": {"method": "rtn", "bits": bits, "group_size": 128, "sym": True, "include": [], "exclude": [],
                    "options": {}, "label": f"rtn-w{bits}g128"},
        "calibration": None,
        "eval_set": {"id": "ev1", "corpus": "builtin", "split": "val", "n_blocks": 4, "seq_len": 32,
                     "n_tokens": 124},
        "metrics": metrics,
        "weight_error": {"n_layers": 2, "rel_err_mean": 0.1, "rel_err_max": 0.2, "weight_mse": 1e-5},
        "timings": {"load_s": 0.1, "fp_eval_s": 0.1, "quantize_s": 0.1, "eval_s": 0.1},
    }


def _curve(points: list[tuple[int, float]]) -> list[list[float]]:
    return [[s, s * TPS, lr] for s, lr in points]


# (run, step, bits) -> ΔQ L in basis points
DEMO = {("main", s, b): bp for s, bp3, bp4 in [(100, 412, 105), (200, 487, 131), (300, 533, 140), (400, 601, 155)]
        for b, bp in ((3, bp3), (4, bp4))}
DEMO.update({("decay200", s, b): bp for s, bp3, bp4 in [(300, 398, 99), (400, 349, 87)]
             for b, bp in ((3, bp3), (4, bp4))})


def _demo_store(root: Path, main_steps: tuple[int, ...] = (100, 200, 300, 400), bits_set: tuple[int, ...] = (3, 4),
                ) -> Store:
    store = Store(root)
    cks = []
    for (run, step, bits), bp in sorted(DEMO.items()):
        if (run == "main" and step not in main_steps) or bits not in bits_set:
            continue
        ps = 200 if run != "main" else None
        store.put(f"demo-{run}-{step}-w{bits}", _record("demo", run, step, bits, bp, parent_step=ps))
        if bits == 3:
            cks.append(Checkpoint(name=f"{run}/step-{step:07d}", path=f"/x/{run}/{step}", step=step,
                                  tokens=step * TPS, lr=0.003, phase="stable", run=run,
                                  parent="main" if ps else None, parent_step=ps))
    runs = {"main": {"schedule": {"kind": "constant"}, "parent": None, "from_step": None, "tokens_per_step": TPS,
                     "lr_curve": _curve([(0, 0.0), (50, 0.003), (200, 0.003), (400, 0.003)])},
            "decay200": {"schedule": {"kind": "wsd"}, "parent": "main", "from_step": 200, "tokens_per_step": TPS,
                         "lr_curve": _curve([(200, 0.003), (300, 0.0015), (400, 0.0)])}}
    store.save_trajectory(Trajectory(name="demo", checkpoints=cks, runs=runs, data={"corpus": "builtin"}))
    return store


def _rows(page: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r'<tr class="rec">(.*?)</tr>', page)]


def test_full_report(tmp_path: Path) -> None:
    _demo_store(tmp_path / "res")
    index = write_report(tmp_path / "res")
    assert index == tmp_path / "res" / "report" / "index.html" and index.is_file()
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == ["dq_demo_rtn-w3g128.png", "dq_demo_rtn-w4g128.png", "loss_demo.png",
                    "stable_vs_decay_demo.png"]
    assert page.count(IMG) == len(pngs)
    for p in pngs:
        assert (index.parent / p).read_bytes().startswith(PNG_SIG)
    rows = _rows(page)
    assert len(rows) == len(DEMO)
    dq_col = 13  # trajectory checkpoint run step tokens lr phase method bits group sym loss_fp loss_q ΔQ-L
    expected = sorted(f"{bp // 100}.{bp % 100:02d}%" for bp in DEMO.values())
    assert sorted(r[dq_col] for r in rows) == expected
    main400 = [r for r in rows if r[2] == "main" and r[3] == "400" and r[8] == "3"]
    assert main400[0][dq_col] == "6.01%" and main400[0][4] == f"{400 * TPS:,}"
    assert "Provenance" in page and "ev1" in page and "decay200" in page


def test_branch_forks_from_parent_point(tmp_path: Path) -> None:
    store = _demo_store(tmp_path / "res")
    (g,) = group_records(store.records(), store.trajectories())
    assert g.use_tokens and g.order == ["main", "decay200"]
    w3 = [r for r in g.recs if r.variant.bits == 3]
    lines = series(g, w3, dq_rel)
    assert lines["decay200"][0] == (200 * TPS, pytest.approx(0.0487))
    assert [x for x, _ in lines["decay200"]] == [200 * TPS, 300 * TPS, 400 * TPS]


def test_stable_vs_decay_only_with_both_sides(tmp_path: Path) -> None:
    _demo_store(tmp_path / "res", main_steps=(100, 200, 300))  # no main@400: no constant-LR control
    index = write_report(tmp_path / "res")
    names = {p.name for p in index.parent.glob("*.png")}
    assert "stable_vs_decay_demo.png" not in names
    assert index.read_text().count(IMG) == 3
    _demo_store(tmp_path / "res2", main_steps=(100, 300, 400), bits_set=(3,))  # no parent point at 200: no crash
    assert "stable_vs_decay_demo.png" in {p.name for p in write_report(tmp_path / "res2").parent.glob("*.png")}


def test_no_runs_no_tokens_falls_back_to_step(tmp_path: Path) -> None:
    store = Store(tmp_path / "res")
    for step, bp in [(0, 900), (10, 700), (20, 650)]:
        store.put(f"plain-{step}", _record("plain", "main", step, 4, bp, tokens=False))
    cks = [Checkpoint(name=f"main/step-{s:07d}", path="/x", step=s) for s in (0, 10, 20)]
    store.save_trajectory(Trajectory(name="plain", checkpoints=cks, runs={}, data=None))
    (g,) = group_records(store.records(), store.trajectories())
    assert not g.use_tokens and series(g, g.recs, dq_rel)["main"][0] == (0, pytest.approx(0.09))
    index = write_report(tmp_path / "res", tmp_path / "out")
    assert sorted(p.name for p in index.parent.glob("*.png")) == ["dq_plain_rtn-w4g128.png", "loss_plain.png"]
    page = index.read_text()
    assert page.count(IMG) == 2 and len(_rows(page)) == 3
    assert sorted(r[13] for r in _rows(page)) == ["6.50%", "7.00%", "9.00%"]


def test_missing_metrics_are_skipped(tmp_path: Path) -> None:
    store = _demo_store(tmp_path / "res")
    store.put("broken", _record("demo", "main", 500, 3, None))
    nan = _record("<evil&>", "main", 100, 3, 100)
    nan["metrics"]["dq_rel"] = float("nan")
    store.put("nan", nan)
    page = write_report(tmp_path / "res").read_text()
    assert page.count(IMG) == 4 and len(_rows(page)) == len(DEMO) + 2
    assert "<evil&>" not in page and "&lt;evil&amp;&gt;" in page
    assert "(2 without metrics" in page


def test_empty_store_says_no_results(tmp_path: Path) -> None:
    Store(tmp_path / "res")
    page = write_report(tmp_path / "res").read_text()
    assert "No results" in page and IMG not in page and page.startswith("<!DOCTYPE html>")


def test_deterministic_names(tmp_path: Path) -> None:
    _demo_store(tmp_path / "res", bits_set=(3,))
    first = write_report(tmp_path / "res")
    a = sorted(p.name for p in first.parent.iterdir())
    png_a = {p.name: p.read_bytes() for p in first.parent.glob("*.png")}
    second = write_report(tmp_path / "res")  # re-run in place: same names, same bytes, no temp leftovers
    assert second == first and sorted(p.name for p in second.parent.iterdir()) == a
    assert {p.name: p.read_bytes() for p in second.parent.glob("*.png")} == png_a


def test_averaged_runs_get_the_f4_figure_and_are_not_cooldowns(tmp_path: Path) -> None:
    store = _demo_store(tmp_path / "res")
    lawa = {300: 301, 400: 352}  # ΔQ L (bp) of the LAWA run at 3 bits
    for step, bp in lawa.items():
        rec = _record("demo", "main-lawa3", step, 3, bp, loss_fp=3.9)
        store.put(f"demo-lawa-{step}", rec)
    traj = store.trajectories()["demo"]
    traj["runs"]["main-lawa3"] = {"averaged": {"averager": "lawa", "window": 3, "stride": 1}, "parent": "main"}
    store.save_trajectory(Trajectory.from_dict(traj, tmp_path))
    (g,) = group_records(store.records(), store.trajectories())
    assert run_label(g, "main-lawa3") == "main-lawa3 (LAWA of main, window 3)"
    w3 = [r for r in g.recs if r.variant.bits == 3]
    pairs = cooldown_pairs(g, [Variant("w3", "w3", w3)])
    assert [p.run for p in pairs] == ["decay200"]  # LAWA is not a cooldown branch
    assert series(g, w3, dq_rel)["main-lawa3"] == [(300 * TPS, 0.0301), (400 * TPS, 0.0352)]
    index = write_report(tmp_path / "res")
    names = sorted(p.name for p in index.parent.glob("averaging_*.png"))
    assert names == ["averaging_demo_rtn-w3g128.png", "averaging_demo_rtn-w4g128.png"]
    assert "weight averaging vs LR decay" in index.read_text()
