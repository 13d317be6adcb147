"""Records grouped for plotting: one :class:`Group` per trajectory and eval set, its runs (main, cooldown
branches, averaged runs) in drawing order with fixed colours, and per-run series of any field.

Figures read the typed records of :mod:`qrobust.results.records`; a plain dict (JSON read elsewhere, a test)
is parsed once on the way in (:func:`qrobust.results.records.variant_records`). Anything missing degrades a figure — x falls back to
step, a run without an LR curve is not shaded — and never raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import QrobustError
from ..results.compare import record_interval
from ..results.records import GeometryRecord, Record, TaskRecord, VariantRecord
from .style import BRANCH_COLOURS, ROOT_COLOUR, num, slug

Value = Callable[[Any], Any]  # a record -> the number to plot (None: no point)


@dataclass
class Group:
    """Plottable records of one trajectory and one eval set, plus what the trajectory file says about its runs
    (``runs``: name -> parent, from_step, lr_curve, averaged)."""
    traj: str
    suffix: str  # "" or "_<eval set>" when the trajectory was evaluated on several sets (file names)
    recs: list[VariantRecord]
    runs: dict[str, dict[str, Any]]
    use_tokens: bool
    order: list[str] = field(default_factory=list)
    colours: dict[str, str] = field(default_factory=dict)

    def x(self, rec: Record) -> Any:
        """The record's x: tokens seen when every record of the group has them, else the step."""
        return rec.checkpoint.tokens if self.use_tokens else rec.checkpoint.step

    @property
    def xaxis(self) -> str:
        return "tokens" if self.use_tokens else "step"


def run_of(rec: Record) -> str:
    return str(rec.checkpoint.run or "main")


def trajectory_of(rec: VariantRecord | GeometryRecord | TaskRecord) -> str:
    return str(rec.trajectory or "unnamed")


def group_records(records: Sequence[VariantRecord], trajectories: Mapping[str, dict[str, Any]]) -> list[Group]:
    """Groups in name order; plottable records only (a finite ΔQ L), the rest is skipped."""
    by_traj: dict[str, list[VariantRecord]] = {}
    for r in records:
        if num(r.metrics.dq_rel) is not None:
            by_traj.setdefault(trajectory_of(r), []).append(r)
    out = []
    for name in sorted(by_traj):
        by_eval: dict[str, list[VariantRecord]] = {}
        for r in by_traj[name]:
            by_eval.setdefault(str(r.eval_set.id or "default"), []).append(r)
        for eid in sorted(by_eval):
            suffix = "" if len(by_eval) == 1 else f"_{slug(eid)}"
            out.append(_group(name, suffix, by_eval[eid], trajectories.get(name) or {}))
    return out


def _group(name: str, suffix: str, recs: list[VariantRecord], tdict: dict[str, Any]) -> Group:
    runs = run_info(tdict, recs)
    use_tokens = all(isinstance(r.checkpoint.tokens, int) for r in recs)
    g = Group(name, suffix, recs, runs, use_tokens)
    roots = [n for n in runs if not runs[n].get("parent")]
    # roots (main first), then cooldowns by branch step, then averaged runs
    g.order = sorted(runs, key=lambda n: (bool(runs[n].get("averaged")), n not in roots, n != "main",
                                          runs[n].get("from_step") or 0, n))
    palette = iter(BRANCH_COLOURS * (1 + len(runs) // len(BRANCH_COLOURS)))
    g.colours = {n: ROOT_COLOUR if i == 0 else next(palette) for i, n in enumerate(g.order)}
    return g


def run_info(tdict: dict[str, Any], recs: list[VariantRecord]) -> dict[str, dict[str, Any]]:
    """Runs that have records, with parent / from_step / lr_curve / averaged from the trajectory file (JSON as
    stored, so checked here) or else from the records."""
    truns = tdict.get("runs") if isinstance(tdict.get("runs"), dict) else {}
    info: dict[str, dict[str, Any]] = {}
    for r in recs:
        name = run_of(r)
        t = truns.get(name) if isinstance(truns.get(name), dict) else {}
        cur = info.setdefault(name, {"parent": t.get("parent"), "from_step": t.get("from_step"),
                                     "lr_curve": t.get("lr_curve") or [],
                                     "averaged": t.get("averaged") if isinstance(t.get("averaged"), dict) else None})
        cur["parent"] = cur["parent"] or r.checkpoint.parent
        cur["from_step"] = cur["from_step"] if cur["from_step"] is not None else r.checkpoint.parent_step
    return info


def series(g: Group, recs: Sequence[Record], value: Value) -> dict[str, list[tuple[float, float]]]:
    """Per run (in drawing order), (x, value) sorted by step; a branch starts at its parent's point so it
    visibly forks off."""
    pts: dict[str, dict[int, tuple[float, float]]] = {}
    for r in recs:
        y = num(value(r))
        if y is not None:
            pts.setdefault(run_of(r), {}).setdefault(r.checkpoint.step, (g.x(r), y))
    out: dict[str, list[tuple[float, float]]] = {}
    for run in g.order:
        if run not in pts:
            continue
        steps = sorted(pts[run])
        line = [pts[run][s] for s in steps]
        parent, fs = g.runs[run].get("parent"), g.runs[run].get("from_step")
        if parent and isinstance(fs, int) and fs < steps[0] and fs in pts.get(parent, {}):
            line.insert(0, pts[parent][fs])
        out[run] = line
    return out


def is_averaged(g: Group, run: str) -> bool:
    return bool(g.runs.get(run, {}).get("averaged"))


def run_label(g: Group, run: str) -> str:
    """The run's legend entry: its name, and what it is when it is a cooldown branch or an averaged run."""
    info = g.runs[run]
    if info.get("averaged"):
        return f"{run} ({averaged_desc(info['averaged'], info.get('parent'))})"
    fs = info.get("from_step")
    return f"{run} (cooldown from step {fs})" if info.get("parent") and fs is not None else run


def averaged_desc(a: dict[str, Any], parent: Any) -> str:
    """'LAWA of main, window 3' and the like, from the averager parameters the trajectory file records."""
    kind = str(a.get("averager", "average"))
    of = f" of {parent}" if parent else ""
    if kind.endswith("lawa"):
        every = f", every {a['every']} steps" if a.get("every") else ""
        return f"LAWA{of}, window {a.get('window')}{every}"
    if kind.endswith("ema"):
        return f"{'per-step ' if kind.startswith('train') else ''}EMA{of}, β={a.get('beta')}"
    if kind == "soup":
        return f"uniform soup of {a.get('ingredients')} runs"
    if kind == "greedy-soup":
        return f"greedy soup of {a.get('ingredients')} candidates"
    return kind


def lr_points(g: Group, run: str) -> list[tuple[float, float]]:
    """The run's LR curve as (x, lr) from the trajectory file's ``lr_curve`` ([step, tokens, lr] rows)."""
    pts = []
    for c in g.runs[run].get("lr_curve") or []:
        if isinstance(c, (list, tuple)) and len(c) >= 3:
            x, lr = num(c[1] if g.use_tokens else c[0]), num(c[2])
            if x is not None and lr is not None:
                pts.append((x, lr))
    return pts


def interval_of(rec: VariantRecord) -> tuple[float, float] | None:
    """The record's paired-bootstrap 95 % interval of ΔQ L (stored, or computed from its per-block losses);
    None when the record has neither."""
    try:
        d = record_interval(rec)
    except QrobustError:  # no stored interval and no per-block losses
        return None
    lo, hi = num(d.get("low")), num(d.get("high"))
    return (lo, hi) if lo is not None and hi is not None else None
