"""FP and quantized eval loss along training in one figure: FP solid, each variant dashed with its own
marker, colour = run."""
from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .groups import run_label, run_of, series
from .overlays import shade_decay
from .registry import GroupInputs, register_figure
from .style import MARKERS, FigureOut, legend_below, save_figure, style_x


def loss_fp(rec: Any) -> Any:
    return rec.metrics.loss_fp


def loss_q(rec: Any) -> Any:
    return rec.metrics.loss_q


@register_figure("loss")
def loss_figure(inputs: GroupInputs) -> list[FigureOut]:
    g, path = inputs.group, inputs.path("loss")
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot()
    for run, pts in series(g, g.recs, loss_fp).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, lw=1.8, color=g.colours[run])
    style: list[Any] = [Line2D([], [], color="0.2", lw=1.8, marker="o", ms=3.5, label="FP (solid)")]
    for i, v in enumerate(inputs.variants):
        m = MARKERS[i % len(MARKERS)]
        for run, pts in series(g, v.recs, loss_q).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker=m, ms=3.5, lw=1.2,
                    color=g.colours[run], alpha=0.85)
        style.append(Line2D([], [], color="0.2", ls="--", marker=m, ms=3.5, lw=1.2, label=f"{v.label} (dashed)"))
    runs = [r for r in g.order if any(run_of(x) == r for x in g.recs)]
    colour = [Line2D([], [], color=g.colours[r], lw=2.5, label=run_label(g, r)) for r in runs]
    shade = shade_decay(ax, g, runs)
    style_x(ax, g.use_tokens)
    ax.set_ylabel("eval loss (nats/token)")
    title = f"{g.traj}: FP and quantized eval loss"
    ax.set_title(title, fontsize=11)
    legend_below(ax, colour + style + shade)
    caption = (f"Full-precision (solid) and quantized (dashed, one marker per variant) eval loss along '{g.traj}'; "
               "colour = run.")
    return [FigureOut(path, "loss", g.traj, title, caption, g.xaxis, save_figure(fig, path))]
