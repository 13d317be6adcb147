"""The look every figure shares: colours, the ΔQ L axis label, axis styling, legends, interval bars, and
writing a PNG.

Figures use matplotlib's object API (``Figure`` + Agg canvas), so no global pyplot state is touched, and each
PNG is written atomically (temp file + ``os.replace``), so a reader never sees half an image. Saving strips
the ``Software`` metadata, so the same figure gives the same bytes on every run.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from ..io.atomic import write_bytes

DPI = 130
ROOT_COLOUR = "#1a1a1a"
BRANCH_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
MARKERS = "osD^vPX*"
DQ_LABEL = "ΔQ L = L_q / L_fp − 1 (%)"


@dataclass(frozen=True)
class FigureOut:
    """One written figure; ``png`` holds the bytes so the HTML can embed them without re-reading."""
    path: Path
    kind: str  # the figure kind's registered name: dq | loss | stable_vs_decay | averaging | geometry | ...
    trajectory: str
    title: str
    caption: str
    xaxis: str  # tokens | step | branch | ...
    png: bytes = field(repr=False)


def num(v: Any) -> float | None:
    """A finite float, or ``None`` for missing / NaN / non-numeric values (what a figure can plot)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def slug(s: Any) -> str:
    """A file-name-safe form of ``s`` (figure names are built from trajectory names and variant labels)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def save_figure(fig: Figure, path: Path) -> bytes:
    """Write ``fig`` as a PNG to ``path`` atomically and return its bytes."""
    FigureCanvasAgg(fig)  # bbox_inches="tight" below does the tight layout (crops to all artists, legend included)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08, metadata={"Software": None})
    data = buf.getvalue()
    write_bytes(path, data, "figure")
    return data


def style_x(ax: Any, use_tokens: bool) -> None:
    """Training progress on x: tokens (engineering notation) when every point has them, else integer steps."""
    ax.set_xlabel("training tokens seen" if use_tokens else "training step")
    if use_tokens:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3, linewidth=0.6)


def legend_below(ax: Any, handles: list[Any]) -> None:
    """Legend under the axes so it never hides data or the LR curves."""
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=min(3, len(handles)), frameon=False)


def legend_under_figure(fig: Figure, handles: list[Any]) -> None:
    """One legend under all panels of a multi-panel figure."""
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(handles)),
               fontsize=8, frameon=False)


def interval_bar(ax: Any, x: float, y: float, ci: tuple[float, float], **style: Any) -> None:
    """A vertical bar from ``ci[0]`` to ``ci[1]`` through the point (x, y) (clipped at the point when the
    interval does not contain it)."""
    ax.errorbar([x], [y], yerr=[[max(y - ci[0], 0.0)], [max(ci[1] - y, 0.0)]], **style)
