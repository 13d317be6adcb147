"""Report: PNG figures and one self-contained HTML page, built only from a results store.

``write_report(results_dir, out_dir=None)`` is the entry point; figures live in :mod:`.figures`,
the page in :mod:`.html`.
"""
from __future__ import annotations

from .figures import FigureOut, make_figures
from .html import render_page, write_report

__all__ = ["write_report", "make_figures", "render_page", "FigureOut"]
