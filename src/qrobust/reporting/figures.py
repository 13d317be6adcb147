"""Paper-grade PNG figures from stored records: ΔQ L and losses vs tokens, and a stable-vs-decay summary.

Uses matplotlib's object API (``Figure`` + Agg canvas) so no global pyplot state is touched, and writes
each PNG atomically (temp file + ``os.replace``) so a reader never sees half an image. Anything missing
(metrics, tokens, LR curves, runs) degrades the figure — x falls back to step, LR axis is dropped — and
never raises.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

from ..io.atomic import write_bytes
from ..quant.registry import base_label

DPI = 130
ROOT_COLOUR = "#1a1a1a"
BRANCH_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
MARKERS = "osD^vPX*"
DQ_LABEL = "ΔQ L = L_q / L_fp − 1 (%)"


@dataclass(frozen=True)
class FigureOut:
    """One written figure; ``png`` holds the bytes so the HTML can embed them without re-reading."""
    path: Path
    kind: str  # dq | loss | stable_vs_decay | averaging | geometry | dq_vs_geometry | tasks | ...
    trajectory: str
    title: str
    caption: str
    xaxis: str  # tokens | step | branch
    png: bytes = field(repr=False)


def get(d: Any, dotted: str) -> Any:
    """Nested lookup by dotted path; ``None`` for anything missing (records may be partial)."""
    d = getattr(d, "raw", d)  # a typed record: its stored fields
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def num(v: Any) -> float | None:
    """A finite float, or ``None`` for missing / NaN / non-numeric values."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def slug(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def variant_slug(rec: dict[str, Any]) -> str:
    return slug(base_label(get(rec, "variant.method"), get(rec, "variant.bits"), get(rec, "variant.group_size"),
                           get(rec, "variant.sym")))


def variant_id(rec: dict[str, Any]) -> tuple[str, str]:
    """(slug, hash of everything else that defines the variant): calibration, include/exclude, options."""
    extra = {k: get(rec, f"variant.{k}") for k in ("include", "exclude", "options")}
    extra["calibration"] = rec.get("calibration")
    blob = json.dumps(extra, sort_keys=True, default=str)
    return variant_slug(rec), hashlib.sha1(blob.encode()).hexdigest()[:6]


def _variant_order(rec: dict[str, Any]) -> tuple[str, float, float, bool]:
    """Numeric order (w3 before w16, per-channel last) so figure order reads naturally."""
    v = [num(get(rec, f"variant.{k}")) for k in ("bits", "group_size")]
    return (str(get(rec, "variant.method")), v[0] or 0.0, v[1] or math.inf, get(rec, "variant.sym") is False)


def _save(fig: Figure, path: Path) -> bytes:
    FigureCanvasAgg(fig)  # bbox_inches="tight" below does the tight layout (crops to all artists, legend included)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08, metadata={"Software": None})
    data = buf.getvalue()
    write_bytes(path, data, "figure")
    return data


# -- grouping ------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """Plottable records of one trajectory and one eval set, plus what the trajectory file says."""
    traj: str
    suffix: str
    recs: list[dict[str, Any]]
    runs: dict[str, dict[str, Any]]
    use_tokens: bool
    order: list[str] = field(default_factory=list)
    colours: dict[str, str] = field(default_factory=dict)


def _run(rec: dict[str, Any]) -> str:
    return str(get(rec, "checkpoint.run") or "main")


def _groups(records: list[dict[str, Any]], trajectories: dict[str, dict[str, Any]]) -> list[_Group]:
    by_traj: dict[str, list[dict[str, Any]]] = {}
    for r in records:  # plottable = has an integer step and a finite ΔQ L; the rest is skipped
        if isinstance(get(r, "checkpoint.step"), int) and num(get(r, "metrics.dq_rel")) is not None:
            by_traj.setdefault(str(r.get("trajectory") or "unnamed"), []).append(r)
    out = []
    for name in sorted(by_traj):
        tdict = trajectories.get(name) or {}
        by_eval: dict[str, list[dict[str, Any]]] = {}
        for r in by_traj[name]:
            by_eval.setdefault(str(get(r, "eval_set.id") or "default"), []).append(r)
        for eid in sorted(by_eval):
            recs = by_eval[eid]
            runs = _run_info(tdict, recs)
            use_tokens = all(isinstance(get(r, "checkpoint.tokens"), int) for r in recs)
            g = _Group(name, "" if len(by_eval) == 1 else f"_{slug(eid)}", recs, runs, use_tokens)
            roots = [n for n in runs if not runs[n].get("parent")]
            # roots (main first), then cooldowns by branch step, then averaged runs
            g.order = sorted(runs, key=lambda n: (bool(runs[n].get("averaged")), n not in roots, n != "main",
                                                  runs[n].get("from_step") or 0, n))
            palette = iter(BRANCH_COLOURS * (1 + len(runs) // len(BRANCH_COLOURS)))
            g.colours = {n: ROOT_COLOUR if i == 0 else next(palette) for i, n in enumerate(g.order)}
            out.append(g)
    return out


def _run_info(tdict: dict[str, Any], recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Runs that have records, with parent / from_step / lr_curve from the trajectory file or the records."""
    truns = tdict.get("runs") if isinstance(tdict.get("runs"), dict) else {}
    info: dict[str, dict[str, Any]] = {}
    for r in recs:
        name = _run(r)
        t = truns.get(name) if isinstance(truns.get(name), dict) else {}
        cur = info.setdefault(name, {"parent": t.get("parent"), "from_step": t.get("from_step"),
                                     "lr_curve": t.get("lr_curve") or [],
                                     "averaged": t.get("averaged") if isinstance(t.get("averaged"), dict) else None})
        cur["parent"] = cur["parent"] or get(r, "checkpoint.parent")
        cur["from_step"] = cur["from_step"] if cur["from_step"] is not None else get(r, "checkpoint.parent_step")
    return info


def _series(g: _Group, recs: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """Per run, (x, y) sorted by step; a branch starts at its parent's point so it visibly forks off."""
    pts: dict[str, dict[int, tuple[float, float]]] = {}
    xkey = "checkpoint.tokens" if g.use_tokens else "checkpoint.step"
    for r in recs:
        y = num(get(r, metric))
        if y is not None:
            pts.setdefault(_run(r), {}).setdefault(get(r, "checkpoint.step"), (get(r, xkey), y))
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


def _run_label(g: _Group, run: str) -> str:
    info = g.runs[run]
    if info.get("averaged"):
        return f"{run} ({_averaged_desc(info['averaged'], info.get('parent'))})"
    fs = info.get("from_step")
    return f"{run} (cooldown from step {fs})" if info.get("parent") and fs is not None else run


def _averaged_desc(a: dict[str, Any], parent: Any) -> str:
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


def _is_averaged(g: _Group, run: str) -> bool:
    return bool(g.runs.get(run, {}).get("averaged"))


# -- drawing -------------------------------------------------------------------------------------------
def _style_x(ax: Any, use_tokens: bool) -> None:
    ax.set_xlabel("training tokens seen" if use_tokens else "training step")
    if use_tokens:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3, linewidth=0.6)


def _legend_below(ax: Any, handles: list[Any]) -> None:
    """Legend under the axes so it never hides data or the LR curves."""
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=min(3, len(handles)), frameon=False)


def _lr_points(g: _Group, run: str) -> list[tuple[float, float]]:
    pts = []
    for c in g.runs[run].get("lr_curve") or []:
        if isinstance(c, (list, tuple)) and len(c) >= 3:
            x, lr = num(c[1] if g.use_tokens else c[0]), num(c[2])
            if x is not None and lr is not None:
                pts.append((x, lr))
    return pts


def _shade(ax: Any, g: _Group, runs: list[str]) -> list[Any]:
    """Shade each run's decay (light, run colour) and warmup (hatched) spans; returns legend handles."""
    handles: list[Any] = []
    warmup_drawn = False
    for run in runs:
        pts = _lr_points(g, run)
        if len(pts) < 2:
            continue
        peak = max(lr for _, lr in pts)
        at_peak = [i for i, (_, lr) in enumerate(pts) if lr >= peak * (1 - 1e-6)]
        if at_peak[0] > 0 and not warmup_drawn:  # branches share the parent's warmup: draw it once
            ax.axvspan(pts[0][0], pts[at_peak[0]][0], facecolor="none", edgecolor="0.6", hatch="///",
                       linewidth=0, alpha=0.5, zorder=0)
            handles.append(Patch(facecolor="none", edgecolor="0.6", hatch="///", label="warmup"))
            warmup_drawn = True
        if at_peak[-1] < len(pts) - 1:
            ax.axvspan(pts[at_peak[-1]][0], pts[-1][0], color=g.colours[run], alpha=0.08, linewidth=0, zorder=0)
            handles.append(Patch(color=g.colours[run], alpha=0.2, label=f"LR decay: {run}"))
    return handles


def _draw_lr(ax: Any, g: _Group, runs: list[str]) -> list[Any]:
    curves = {run: _lr_points(g, run) for run in runs}
    curves = {k: v for k, v in curves.items() if len(v) >= 2}
    if not curves:
        return []
    ax2 = ax.twinx()
    for run, pts in curves.items():
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], color=g.colours[run], lw=0.9, alpha=0.35, zorder=1)
    ax2.set_ylabel("learning rate (right axis)", color="0.35")
    ax2.set_ylim(0, 1.12 * max(lr for pts in curves.values() for _, lr in pts) or 1.0)
    ax2.tick_params(axis="y", colors="0.35", labelsize=8)
    return [Line2D([], [], color="0.5", lw=0.9, alpha=0.5, label="LR schedule (right axis)")]


def ci_of(rec: dict[str, Any]) -> tuple[float, float] | None:
    """The record's paired-bootstrap 95 % interval of ΔQ L (stored, or computed from its per-block
    losses); None when the record has neither."""
    from ..errors import QrobustError
    from ..stats import record_interval
    try:
        ci = record_interval(rec)
    except QrobustError:
        return None
    lo, hi = num(ci.get("low")), num(ci.get("high"))
    return (lo, hi) if lo is not None and hi is not None else None


def _error_bars(ax: Any, g: _Group, recs: list[dict[str, Any]]) -> bool:
    """Vertical 95 % interval bars at each plotted ΔQ L point; True if any was drawn."""
    xkey = "checkpoint.tokens" if g.use_tokens else "checkpoint.step"
    drawn = False
    for r in recs:
        x, y, ci = get(r, xkey), num(get(r, "metrics.dq_rel")), ci_of(r)
        if ci is None or y is None or not isinstance(x, (int, float)) or _run(r) not in g.colours:
            continue
        ax.errorbar([x], [y], yerr=[[max(y - ci[0], 0.0)], [max(ci[1] - y, 0.0)]], color=g.colours[_run(r)],
                    lw=0.8, capsize=2, alpha=0.7, zorder=2)
        drawn = True
    return drawn


def _dq_figure(g: _Group, label: str, recs: list[dict[str, Any]], path: Path) -> FigureOut:
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot()
    series = _series(g, recs, "metrics.dq_rel")
    handles: list[Any] = []
    for run, pts in series.items():
        (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1.6,
                       color=g.colours[run], label=_run_label(g, run), zorder=3)
        handles.append(h)
    bars = _error_bars(ax, g, recs)
    handles += _draw_lr(ax, g, list(series)) + _shade(ax, g, list(series))
    _style_x(ax, g.use_tokens)
    ax.set_ylabel(DQ_LABEL)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    title = f"{g.traj}: quantization degradation, {label}"
    ax.set_title(title, fontsize=11)
    _legend_below(ax, handles)
    caption = (f"Relative loss increase from quantization ({label}) along the training trajectory '{g.traj}'; "
               "one line per run, cooldown branches fork off the main run; faint lines: LR schedule; "
               "shaded: LR decay phases" + ("; bars: paired-bootstrap 95 % intervals over evaluation blocks." if bars
                                             else "."))
    return FigureOut(path, "dq", g.traj, title, caption, "tokens" if g.use_tokens else "step", _save(fig, path))


def _loss_figure(g: _Group, variants: list[tuple[str, list[dict[str, Any]]]], path: Path) -> FigureOut:
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot()
    for run, pts in _series(g, g.recs, "metrics.loss_fp").items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, lw=1.8, color=g.colours[run])
    style: list[Any] = [Line2D([], [], color="0.2", lw=1.8, marker="o", ms=3.5, label="FP (solid)")]
    for i, (label, recs) in enumerate(variants):
        m = MARKERS[i % len(MARKERS)]
        for run, pts in _series(g, recs, "metrics.loss_q").items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker=m, ms=3.5, lw=1.2,
                    color=g.colours[run], alpha=0.85)
        style.append(Line2D([], [], color="0.2", ls="--", marker=m, ms=3.5, lw=1.2, label=f"{label} (dashed)"))
    runs = [r for r in g.order if any(_run(x) == r for x in g.recs)]
    colour = [Line2D([], [], color=g.colours[r], lw=2.5, label=_run_label(g, r)) for r in runs]
    shade = _shade(ax, g, runs)
    _style_x(ax, g.use_tokens)
    ax.set_ylabel("eval loss (nats/token)")
    title = f"{g.traj}: FP and quantized eval loss"
    ax.set_title(title, fontsize=11)
    _legend_below(ax, colour + style + shade)
    caption = (f"Full-precision (solid) and quantized (dashed, one marker per variant) eval loss along '{g.traj}'; "
               "colour = run.")
    return FigureOut(path, "loss", g.traj, title, caption, "tokens" if g.use_tokens else "step", _save(fig, path))


def _pairs(g: _Group, variants: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[Any, ...]]:
    """(variant, branch, step, ΔQ L of the constant-LR control, ΔQ L at the branch endpoint, control record,
    endpoint record) when both exist."""
    out = []
    for label, recs in variants:
        for run in g.order:
            parent = g.runs[run].get("parent")
            ends = [r for r in recs if _run(r) == run]
            if not parent or not ends or _is_averaged(g, run):
                continue
            end = max(ends, key=lambda r: get(r, "checkpoint.step"))
            step = get(end, "checkpoint.step")
            ctrl = [r for r in recs if _run(r) == parent and get(r, "checkpoint.step") == step]
            if ctrl:
                out.append((label, run, step, num(get(ctrl[0], "metrics.dq_rel")), num(get(end, "metrics.dq_rel")),
                            ctrl[0], end))
    return out


def _svd_figure(g: _Group, pairs: list[tuple[Any, ...]], path: Path) -> FigureOut:
    fig = Figure(figsize=(max(6.0, 1.3 * len(pairs) + 2.5), 4.6))
    ax = fig.add_subplot()
    w = 0.38
    for i, (_, run, _, ctrl, end, rc, re_) in enumerate(pairs):
        ax.bar(i - w / 2, ctrl, w, color="0.65", edgecolor="0.3", linewidth=0.6, zorder=3)
        ax.bar(i + w / 2, end, w, color=g.colours[run], edgecolor="0.3", linewidth=0.6, zorder=3)
        for x, v, rec in ((i - w / 2, ctrl, rc), (i + w / 2, end, re_)):
            ci = ci_of(rec)
            if ci is not None:
                ax.errorbar([x], [v], yerr=[[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]], color="0.15", lw=0.8,
                            capsize=2, zorder=4)
        for x, v in ((i - w / 2, ctrl), (i + w / 2, end)):
            ax.annotate(f"{100 * v:.2f}%", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7,
                        xytext=(0, 2 if v >= 0 else -2), textcoords="offset points")
    ax.set_xticks(range(len(pairs)), [f"{p[0]}\n{p[1]} @ step {p[2]}" for p in pairs], fontsize=8)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_ylabel(DQ_LABEL)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    ax.set_xlabel("variant, cooldown branch endpoint")
    handles = [Patch(facecolor="0.65", edgecolor="0.3", label="constant LR (parent run, same step)")]
    handles += [Patch(facecolor=g.colours[r], edgecolor="0.3", label=f"after cooldown: {r}")
                for r in dict.fromkeys(p[1] for p in pairs)]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    title = f"{g.traj}: stable vs decay, ΔQ L at cooldown endpoints"
    ax.set_title(title, fontsize=11)
    caption = ("For each cooldown branch, ΔQ L at its last checkpoint (colour) next to the constant-LR parent "
               "run's checkpoint at the same step (grey), per variant.")
    return FigureOut(path, "stable_vs_decay", g.traj, title, caption, "branch", _save(fig, path))


def make_figures(records: list[dict[str, Any]], trajectories: dict[str, dict[str, Any]],
                 out_dir: str | Path, geometry: list[dict[str, Any]] | None = None,
                 tasks: list[dict[str, Any]] | None = None, kinds: set[str] | None = None) -> list[FigureOut]:
    """Write every figure for the given records (and loss-geometry records) into ``out_dir``;
    deterministic names, sorted order. ``kinds``: only these (dq, loss, averaging, stable_vs_decay)."""
    def want(kind: str) -> bool:
        return kinds is None or kind in kinds

    from .averaging import averaging_figure
    from .geometry import geometry_figures
    from .tasks import task_figures
    out_dir = Path(out_dir)
    figs: list[FigureOut] = []
    for g in _groups(records, trajectories):
        by_var: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in g.recs:
            by_var.setdefault(variant_id(r), []).append(r)
        slugs = [k[0] for k in by_var]
        variants, names = [], []
        for key in sorted(by_var, key=lambda k: (_variant_order(by_var[k][0]), k)):
            name = key[0] if slugs.count(key[0]) == 1 else f"{key[0]}-{key[1]}"
            label = get(by_var[key][0], "variant.label") or key[0]
            label = label if slugs.count(key[0]) == 1 else f"{label} [{key[1]}]"
            variants.append((label, by_var[key]))
            names.append(name)
            if want("dq"):
                figs.append(_dq_figure(g, label, by_var[key], out_dir / f"dq_{slug(g.traj)}{g.suffix}_{name}.png"))
        if want("loss"):
            figs.append(_loss_figure(g, variants, out_dir / f"loss_{slug(g.traj)}{g.suffix}.png"))
        if want("averaging") and any(_is_averaged(g, r) for r in g.runs):
            for (label, recs), name in zip(variants, names):
                path = out_dir / f"averaging_{slug(g.traj)}{g.suffix}_{name}.png"
                figs.append(averaging_figure(g, label, recs, path))
        pairs = [p for p in _pairs(g, variants) if p[3] is not None and p[4] is not None]
        if pairs and want("stable_vs_decay"):
            figs.append(_svd_figure(g, pairs, out_dir / f"stable_vs_decay_{slug(g.traj)}{g.suffix}.png"))
        named = [(lab, n, recs) for (lab, recs), n in zip(variants, names)]
        if geometry:
            figs += geometry_figures(g, named, geometry, out_dir)
        if tasks:
            figs += task_figures(g, named, tasks, out_dir)
    return figs
