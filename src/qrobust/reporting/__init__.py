"""Report: PNG figures and one self-contained HTML page, built only from a results store.

``write_report(results_dir, out_dir=None)`` is the entry point. Figures are drawn per figure kind, a registry
(:func:`register_figure`) whose built-in kinds each live in their own module (:mod:`.dq`, :mod:`.loss`,
:mod:`.averaging`, :mod:`.stable_vs_decay`, :mod:`.geometry`, :mod:`.tasks`); :mod:`.figures` draws every
registered kind for every trajectory, :mod:`.html` writes the page.
"""
from __future__ import annotations

from .figures import make_figures
from .html import render_page, write_report
from .registry import FigureKind, GroupInputs, register_figure
from .style import FigureOut, save_figure

__all__ = ["write_report", "make_figures", "render_page", "FigureOut", "register_figure", "FigureKind",
           "GroupInputs", "save_figure"]
