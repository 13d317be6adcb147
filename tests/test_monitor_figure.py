"""The live monitor's figure and report section, from a hand-written training folder: a main run monitored at
steps 4/8/12 and a cooldown branch from step 8 monitored at 12 (where an alert fired)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from qrobust.reporting.monitor_curves import (alert_points, draw_run, dq_points, fork_line, labels_of, monitor_figures,
                                              monitor_section, parse_log, read_run_logs)

W3, W4 = "rtn-w3g16", "rtn-w4g16"


def mon(step: int, dq3: float, dq4: float, alert: float | None = None) -> dict:
    line = {"step": step, "monitor/loss_fp": 4.0, "monitor/seconds": 0.5}
    for label, dq in ((W3, dq3), (W4, dq4)):
        line |= {f"monitor/loss_q/{label}": 4.0 * (1 + dq), f"monitor/dq/{label}": dq,
                 f"monitor/dq_low/{label}": dq - 0.01, f"monitor/dq_high/{label}": dq + 0.01}
    if alert is not None:
        line[f"monitor/alert/dq/{W3}"] = alert
    return line


def write(folder: Path, run: str, lines: list, torn: bool = False) -> None:
    text = "".join(json.dumps(x) + "\n" for x in lines) + ('{"step": 13, "lr": 0.00' if torn else "")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "logs" / f"{run}.jsonl").write_text(text)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    main = []
    for s in range(1, 13):
        main.append({"step": s, "loss": 5.0 - 0.1 * s, "lr": 1e-3 * min(1.0, s / 2)})
        if s % 4 == 0:
            main.append(mon(s, 0.02 * s, 0.01 * s))
    branch = []
    for s in range(9, 13):
        branch.append({"step": s, "loss": 4.0, "lr": 1e-3 * (12 - s) / 4})
    branch.append(mon(12, 0.30, 0.12, alert=0.875))
    write(tmp_path, "main", main, torn=True)
    write(tmp_path, "decay8", branch)
    write(tmp_path, "unmonitored", [{"step": 1, "lr": 1e-3}])
    return tmp_path


def test_logs_are_read_per_run_with_the_branch_forking_from_main(out):
    logs = read_run_logs(out)
    assert [lg.run for lg in logs] == ["main", "decay8"]  # main first; a run without monitor lines is left out
    main, branch = logs
    assert main.lr == [(s, 1e-3 * min(1.0, s / 2)) for s in range(1, 13)]  # the torn step-13 line is skipped
    assert [ln["step"] for ln in main.lines] == [4, 8, 12] and "loss" not in main.lines[0]  # monitor lines only
    assert labels_of(logs) == [W3, W4]
    assert fork_line(logs, branch)["step"] == 8 and fork_line(logs, main) is None
    assert dq_points(logs, branch, W3) == [(8, 0.16, pytest.approx(0.15), pytest.approx(0.17)),
                                          (12, 0.30, pytest.approx(0.29), pytest.approx(0.31))]
    assert alert_points(branch, W3) == [(12, 0.30)] and alert_points(branch, W4) == [] and alert_points(main, W3) == []


def test_a_later_line_for_the_same_step_wins_and_junk_is_skipped():
    lg = parse_log("r", '{"step": 2, "monitor/dq/a": 0.1}\nnot json\n{"lr": 1}\n{"step": 2, "monitor/dq/a": 0.2}\n')
    assert lg.lines == [{"step": 2, "monitor/dq/a": 0.2}] and lg.lr == []


def test_draw_run_plots_the_logged_numbers(out):
    logs = read_run_logs(out)
    fig = Figure()
    top, bottom = fig.subplots(2, 1)
    assert draw_run((top, bottom), logs, logs[1], W3, "#d62728") is True
    (line,) = top.lines
    assert list(line.get_xdata()) == [8, 12] and list(line.get_ydata()) == [0.16, 0.30]
    (band,) = top.collections[:1]
    lows = sorted({round(float(y), 6) for y in band.get_paths()[0].vertices[:, 1]})
    assert lows == [0.15, 0.17, 0.29, 0.31]
    assert [tuple(p) for p in top.collections[1].get_offsets()] == [(12.0, 0.30)]  # the alert marker
    (lr,) = bottom.lines
    assert list(lr.get_xdata()) == [9, 10, 11, 12] and list(lr.get_ydata()) == [1e-3 * (12 - s) / 4 for s in range(9, 13)]


def test_figures_one_per_variant_deterministic(out, tmp_path):
    figs = monitor_figures(out, tmp_path / "figs", name="demo")
    assert [f.path.name for f in figs] == [f"monitor_demo_{W3}.png", f"monitor_demo_{W4}.png"]
    assert all(f.png.startswith(b"\x89PNG") and f.path.read_bytes() == f.png and f.kind == "monitor" for f in figs)
    assert "open triangles: alerts" in figs[0].caption and "alerts" not in figs[1].caption
    again = monitor_figures(out, tmp_path / "again", name="demo")
    assert [f.png for f in again] == [f.png for f in figs]


def test_section_has_the_figures_and_the_last_values(out, tmp_path):
    html = monitor_section(out, tmp_path / "figs", name="demo")
    assert html.startswith("<h2>Live monitor</h2>") and html.count("data:image/png;base64,") == 2
    assert "spent 2.0 s in 4 evaluations" in html
    rows = html.split("<tbody>")[1].split("</tbody>")[0].strip().splitlines()
    assert len(rows) == 4  # 2 runs x 2 variants, each run's last evaluation
    # main at step 12: ΔQ L 24 %, band 23-25 %, loss_q 4 * 1.24; no alerts. The branch: 30 %, one alert.
    assert ">main<" in rows[0] and ">24.00%<" in rows[0] and ">23.00%<" in rows[0] and ">4.9600<" in rows[0]
    assert rows[0].endswith("<td>0</td></tr>")
    assert ">decay8<" in rows[2] and ">30.00%<" in rows[2] and rows[2].endswith("<td>1</td></tr>")
    assert ">12.00%<" in rows[3] and ">4.4800<" in rows[3] and rows[3].endswith("<td>0</td></tr>")  # alert was on w3


def test_no_monitor_lines_no_section(tmp_path):
    write(tmp_path, "main", [{"step": 1, "loss": 3.0, "lr": 1e-3}])
    assert monitor_section(tmp_path, tmp_path / "figs") == "" and monitor_figures(tmp_path, tmp_path / "f") == []
    assert monitor_section(tmp_path / "nothing", tmp_path / "figs") == ""


@pytest.mark.skipif(importlib.util.find_spec("qrobust.monitor.core") is None, reason="needs qrobust.monitor (core)")
def test_a_real_monitored_run_is_drawn_from_its_logs(tmp_path):
    """qrobust's own loop with a monitor block (main + a cooldown branch from step 8): the figure reads its logs."""
    import torch
    from conftest import tiny_config
    from qrobust.config import TrainConfig, parse_config
    from qrobust.training.loop import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monitor = {"every": 4, "n_blocks": 4, "batch_size": 2, "bits": [3], "group_size": 16}
        train(parse_config(TrainConfig, tiny_config(tmp_path / "run", monitor=monitor)), progress=False)
    finally:
        torch.set_num_threads(threads)
    logs = read_run_logs(tmp_path / "run")
    assert [(lg.run, [ln["step"] for ln in lg.lines]) for lg in logs] == [("main", [4, 8, 12]), ("decay8", [12])]
    main, branch = logs
    logged = [json.loads(x) for x in (tmp_path / "run" / "logs" / "decay8.jsonl").read_text().splitlines()]
    assert branch.lr == [(ln["step"], ln["lr"]) for ln in logged if "lr" in ln] and len(branch.lr) == 4
    w3 = "rtn-w3g16"
    assert [p[:2] for p in dq_points(logs, branch, w3)] == [
        (8, main.lines[1][f"monitor/dq/{w3}"]), (12, logged[-1][f"monitor/dq/{w3}"])]
    figs = monitor_figures(tmp_path / "run", tmp_path / "figs")
    assert [f.path.name for f in figs] == [f"monitor_run_{w3}.png"]

    # the report of a sweep of this run shows the live monitor beside the store's figures; one without, nothing
    from qrobust.reporting.html import write_report
    from qrobust.sweeps import sweep
    sweep({"trajectory": str(tmp_path / "run"), "out": str(tmp_path / "res"), "bits": [3], "group_sizes": [16],
           "eval": {"n_blocks": 4, "batch_size": 2}}, progress=False)
    page = write_report(tmp_path / "res").read_text()
    assert "<h2>Live monitor</h2>" in page and f'id="monitor_t_{w3}"' in page
    assert (tmp_path / "res" / "report" / f"monitor_t_{w3}.png").is_file()


def test_a_report_without_a_monitor_has_no_monitor_section(tiny_results, tmp_path):
    from qrobust.reporting.html import write_report
    page = write_report(tiny_results, tmp_path / "rep").read_text()
    assert "Live monitor" not in page and "<h2>Figures</h2>" in page
