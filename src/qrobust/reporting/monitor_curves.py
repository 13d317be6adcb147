"""The live monitor's curves, drawn from a training output folder's step logs (``out/logs/<run>.jsonl``).

Per monitored variant one figure: ΔQ L of every run (main and cooldown branches, each branch drawn from the
main run's evaluation it forks from) against step, the paired-bootstrap band shaded around it, fired alerts
marked, and the LR schedule of each run in a panel below: where a decay starts, the monitor curve should be
read against it. :func:`monitor_section` is the report's HTML section: these figures and a table of each
run's last evaluation. The logs are read as written by the training loop and the trainer callbacks: train
lines carry ``lr``, monitor lines ``monitor/...`` keys; a line torn by a kill is skipped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from .markup import esc, figures_html, fmt
from .style import BRANCH_COLOURS, DQ_LABEL, ROOT_COLOUR, FigureOut, legend_under_figure, num, save_figure, slug

PREFIX = "monitor/"
MAIN = "main"


@dataclass
class RunLog:
    """One run's step log: its LR per step and its monitor lines, in step order."""

    run: str
    lr: list[tuple[int, float]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)

    def first_step(self) -> int | None:
        steps = [s for s, _ in self.lr] + [int(ln["step"]) for ln in self.lines]
        return min(steps) if steps else None


def parse_log(run: str, text: str) -> RunLog:
    """A run's log from its JSONL text (a later line for the same step replaces an earlier one, as a resumed
    run's log does not repeat steps but a hand-joined one might)."""
    lr: dict[int, float] = {}
    mon: dict[int, dict[str, Any]] = {}
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
            step = int(line["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if (v := num(line.get("lr"))) is not None:
            lr[step] = v
        if any(k.startswith(PREFIX) for k in line):
            mon[step] = {**mon.get(step, {}), **line}
    return RunLog(run, sorted(lr.items()), [mon[s] for s in sorted(mon)])


def read_run_logs(out: str | Path) -> list[RunLog]:
    """The runs of a training output folder that have monitor lines: ``main`` first, then by name."""
    folder = Path(out) / "logs"
    logs = [parse_log(p.stem, p.read_text(errors="replace")) for p in sorted(folder.glob("*.jsonl"))]
    logs = [lg for lg in logs if lg.lines]
    return sorted(logs, key=lambda lg: (lg.run != MAIN, lg.run))


def labels_of(logs: list[RunLog]) -> list[str]:
    """The monitored variant labels (``monitor/dq/<label>``), in order of first appearance."""
    seen: dict[str, None] = {}
    for lg in logs:
        for ln in lg.lines:
            for k in ln:
                if k.startswith(PREFIX + "dq/"):
                    seen.setdefault(k[len(PREFIX + "dq/"):], None)
    return list(seen)


def colours_of(logs: list[RunLog]) -> dict[str, str]:
    """Main in the root colour, branches in the branch palette (the colours of the other figures)."""
    palette = iter(BRANCH_COLOURS * (1 + len(logs) // len(BRANCH_COLOURS)))
    return {lg.run: ROOT_COLOUR if lg.run == MAIN else next(palette) for lg in logs}


def fork_line(logs: list[RunLog], lg: RunLog) -> dict[str, Any] | None:
    """For a branch: the main run's last monitor line before the branch's first logged step (where it forks)."""
    main = next((m for m in logs if m.run == MAIN), None)
    first = lg.first_step()
    if lg.run == MAIN or main is None or first is None:
        return None
    before = [ln for ln in main.lines if int(ln["step"]) < first]
    return before[-1] if before else None


def dq_points(logs: list[RunLog], lg: RunLog, label: str) -> list[tuple[int, float, float | None, float | None]]:
    """(step, ΔQ L, low, high) of ``label`` along one run, a branch starting at its fork point."""
    lines = [x for x in [fork_line(logs, lg)] if x is not None] + lg.lines
    pts = []
    for ln in lines:
        dq = num(ln.get(f"{PREFIX}dq/{label}"))
        if dq is not None:
            pts.append((int(ln["step"]), dq, num(ln.get(f"{PREFIX}dq_low/{label}")),
                        num(ln.get(f"{PREFIX}dq_high/{label}"))))
    return pts


def alert_points(lg: RunLog, label: str) -> list[tuple[int, float]]:
    """(step, ΔQ L) where an alert on a metric of ``label`` (``monitor/alert/<...>/<label>``) fired."""
    out = []
    for ln in lg.lines:
        fired = any(k.startswith(PREFIX + "alert/") and k.endswith("/" + label) for k in ln)
        if fired and (dq := num(ln.get(f"{PREFIX}dq/{label}"))) is not None:
            out.append((int(ln["step"]), dq))
    return out


def draw_run(axes: tuple[Any, Any], logs: list[RunLog], lg: RunLog, label: str, colour: str) -> bool:
    """One run's ΔQ L line, band and alerts (top) and LR (bottom); True when an alert was marked."""
    top, bottom = axes
    pts = dq_points(logs, lg, label)
    if pts:
        xs = [p[0] for p in pts]
        top.plot(xs, [p[1] for p in pts], marker="o", ms=3.5, lw=1.6, color=colour, zorder=3)
        band = [(p[0], p[2], p[3]) for p in pts if p[2] is not None and p[3] is not None]
        if band:
            top.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=colour,
                             alpha=0.15, linewidth=0, zorder=2)
    alerts = alert_points(lg, label)
    if alerts:
        top.scatter([a[0] for a in alerts], [a[1] for a in alerts], marker="v", s=70, facecolor="none",
                    edgecolor="#d62728", linewidth=1.6, zorder=4)
    if lg.lr:
        bottom.plot([s for s, _ in lg.lr], [v for _, v in lg.lr], color=colour, lw=1.2)
    return bool(alerts)


def monitor_figure(logs: list[RunLog], label: str, path: Path, title_of: str) -> FigureOut:
    """The ΔQ L monitor figure of one variant label across all runs in ``logs``."""
    fig = Figure(figsize=(7.5, 5.4))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    colours = colours_of(logs)
    any_alert = False
    for lg in logs:
        any_alert |= draw_run((top, bottom), logs, lg, label, colours[lg.run])
    top.set_ylabel(DQ_LABEL)
    top.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    bottom.set_ylabel("LR", fontsize=9)
    bottom.set_xlabel("training step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3, linewidth=0.6)
    title = f"{title_of}: live monitor, {label}"
    top.set_title(title, fontsize=11)
    handles: list[Any] = [Line2D([], [], color=colours[lg.run], lw=2, marker="o", ms=3.5, label=lg.run) for lg in logs]
    handles.append(Patch(color="0.5", alpha=0.3, label="paired-bootstrap interval"))
    if any_alert:
        handles.append(Line2D([], [], ls="", marker="v", ms=8, mfc="none", mec="#d62728", label="alert fired"))
    legend_under_figure(fig, handles)
    caption = (f"ΔQ L ({label}) measured live by the monitor along training in '{title_of}', one line per run "
               "(branches start at the main run's evaluation they fork from); shaded: paired-bootstrap interval "
               "over the monitor's blocks; lower panel: the learning rate of each run"
               + ("; open triangles: alerts." if any_alert else "."))
    return FigureOut(path, "monitor", title_of, title, caption, "step", save_figure(fig, path))


def monitor_figures(out: str | Path, fig_dir: str | Path, name: str | None = None) -> list[FigureOut]:
    """One figure per monitored variant of the training folder ``out``, written to ``fig_dir`` as
    ``monitor_<name>_<label>.png`` (``name``: the folder's name unless given); none without monitor lines."""
    logs = read_run_logs(out)
    title_of = name or Path(out).resolve().name
    return [monitor_figure(logs, label, Path(fig_dir) / f"monitor_{slug(title_of)}_{slug(label)}.png", title_of)
            for label in labels_of(logs)]


# (header, value of a run's last monitor line for a label, format)
TABLE = [("ΔQ L", "dq", "pct"), ("low", "dq_low", "pct"), ("high", "dq_high", "pct"), ("loss_q", "loss_q", "loss")]


def last_values_table(logs: list[RunLog]) -> str:
    """Each run's last evaluation, one row per variant, and how many alerts on that variant's metrics
    (``monitor/alert/<...>/<label>``) fired along the run."""
    head = ("<tr><th class=\"l\">run</th><th>step</th><th class=\"l\">variant</th><th>loss_fp</th>"
            + "".join(f"<th>{esc(h)}</th>" for h, _, _ in TABLE) + "<th>alerts</th></tr>")
    rows = []
    for lg in logs:
        last = lg.lines[-1]
        for label in labels_of([RunLog(lg.run, lines=[last])]):
            n_alerts = len(alert_points(lg, label))
            cells = "".join(f"<td>{esc(fmt(last.get(f'{PREFIX}{key}/{label}'), kind))}</td>" for _, key, kind in TABLE)
            rows.append(f"<tr><td class=\"l\">{esc(lg.run)}</td><td>{esc(fmt(last['step'], 'int'))}</td>"
                        f"<td class=\"l\">{esc(label)}</td><td>{esc(fmt(last.get(PREFIX + 'loss_fp'), 'loss'))}</td>"
                        f"{cells}<td>{n_alerts}</td></tr>")
    return f"<table class=\"monitor\"><thead>{head}</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def monitor_section(out: str | Path, fig_dir: str | Path, name: str | None = None) -> str:
    """The report's "Live monitor" section for the training folder ``out`` (figures written to ``fig_dir``);
    an empty string when the folder has no monitor lines, so a report without a monitor shows nothing."""
    logs = read_run_logs(out)
    if not logs:
        return ""
    figs = monitor_figures(out, fig_dir, name)
    seconds = [s for lg in logs for ln in lg.lines if (s := num(ln.get(PREFIX + "seconds"))) is not None]
    cost = (f" The monitor spent {sum(seconds):.1f} s in {len(seconds)} evaluations." if seconds else "")
    return ("<h2>Live monitor</h2><p class=\"meta\">ΔQ L measured while training, from the step logs of "
            f"<code>{esc(Path(out))}</code>.{esc(cost)}</p>" + figures_html(figs)
            + "<h3>Last evaluation of each run</h3>" + last_values_table(logs))


def training_folders(records: list[Any]) -> dict[str, Path]:
    """The training folder of each trajectory a store's records come from (``<out>/checkpoints/<run>/<step>``
    with ``<out>/logs`` beside it): where its monitor lines are. Averaged and Hub checkpoints have none."""
    found: dict[str, Path] = {}
    for r in records:
        path = getattr(r.checkpoint, "path", None)
        if r.trajectory in found or not path:
            continue
        p = Path(path)
        if len(p.parents) > 2 and p.parents[1].name == "checkpoints" and (p.parents[2] / "logs").is_dir():
            found[r.trajectory] = p.parents[2]
    return found
