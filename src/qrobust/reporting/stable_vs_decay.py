"""Stable vs decay: ΔQ L at each cooldown branch's last checkpoint next to the constant-LR parent run at the
same step, per variant (the paper's question: does the LR decay itself change quantization robustness?)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from ..results.records import VariantRecord
from .groups import Group, interval_of, is_averaged, run_of
from .registry import GroupInputs, register_figure
from .style import DQ_LABEL, FigureOut, interval_bar, num, save_figure
from .variants import Variant


@dataclass(frozen=True)
class CooldownPair:
    """A cooldown branch's endpoint and its constant-LR control (the parent run at the same step)."""
    label: str  # the variant's
    run: str
    step: int
    control: float | None  # ΔQ L of the control
    end: float | None  # ΔQ L at the branch endpoint
    control_rec: VariantRecord
    end_rec: VariantRecord


def cooldown_pairs(g: Group, variants: list[Variant]) -> list[CooldownPair]:
    """Every (variant, cooldown branch) whose endpoint step the parent run also has; averaged runs are not
    cooldowns."""
    out = []
    for v in variants:
        for run in g.order:
            parent = g.runs[run].get("parent")
            ends = [r for r in v.recs if run_of(r) == run]
            if not parent or not ends or is_averaged(g, run):
                continue
            end = max(ends, key=lambda r: r.checkpoint.step)
            step = end.checkpoint.step
            ctrl = [r for r in v.recs if run_of(r) == parent and r.checkpoint.step == step]
            if ctrl:
                out.append(CooldownPair(v.label, run, step, num(ctrl[0].metrics.dq_rel), num(end.metrics.dq_rel),
                                        ctrl[0], end))
    return out


@register_figure("stable_vs_decay")
def stable_vs_decay(inputs: GroupInputs) -> list[FigureOut]:
    pairs = [p for p in cooldown_pairs(inputs.group, inputs.variants) if p.control is not None and p.end is not None]
    return [svd_figure(inputs.group, pairs, inputs.path("stable_vs_decay"))] if pairs else []


def _bars(ax: Any, g: Group, pairs: list[CooldownPair]) -> None:
    w = 0.38
    for i, p in enumerate(pairs):
        ax.bar(i - w / 2, p.control, w, color="0.65", edgecolor="0.3", linewidth=0.6, zorder=3)
        ax.bar(i + w / 2, p.end, w, color=g.colours[p.run], edgecolor="0.3", linewidth=0.6, zorder=3)
        for x, v, rec in ((i - w / 2, p.control, p.control_rec), (i + w / 2, p.end, p.end_rec)):
            ci = interval_of(rec)
            if ci is not None:
                interval_bar(ax, x, v, ci, color="0.15", lw=0.8, capsize=2, zorder=4)
        for x, v in ((i - w / 2, p.control), (i + w / 2, p.end)):
            ax.annotate(f"{100 * v:.2f}%", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7,
                        xytext=(0, 2 if v >= 0 else -2), textcoords="offset points")


def svd_figure(g: Group, pairs: list[CooldownPair], path: Path) -> FigureOut:
    fig = Figure(figsize=(max(6.0, 1.3 * len(pairs) + 2.5), 4.6))
    ax = fig.add_subplot()
    _bars(ax, g, pairs)
    ax.set_xticks(range(len(pairs)), [f"{p.label}\n{p.run} @ step {p.step}" for p in pairs], fontsize=8)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_ylabel(DQ_LABEL)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    ax.set_xlabel("variant, cooldown branch endpoint")
    handles = [Patch(facecolor="0.65", edgecolor="0.3", label="constant LR (parent run, same step)")]
    handles += [Patch(facecolor=g.colours[r], edgecolor="0.3", label=f"after cooldown: {r}")
                for r in dict.fromkeys(p.run for p in pairs)]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    title = f"{g.traj}: stable vs decay, ΔQ L at cooldown endpoints"
    ax.set_title(title, fontsize=11)
    caption = ("For each cooldown branch, ΔQ L at its last checkpoint (colour) next to the constant-LR parent "
               "run's checkpoint at the same step (grey), per variant.")
    return FigureOut(path, "stable_vs_decay", g.traj, title, caption, "branch", save_figure(fig, path))
