"""The HTML pieces every page shares: the style sheet, escaping, number formatting and JSON blocks.
Used by the report page and by other pages built from records (e.g. a reproduction's)."""
from __future__ import annotations

import base64
import html as _html
import json
from typing import Any

from .style import FigureOut, num

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em}.empty{padding:1em;background:#fff4e5;border:1px solid #f0c36d}
figure{margin:1.5em 0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:60em;margin:.4em auto}
table{border-collapse:collapse;font-size:.82em;width:100%}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f2f2f2;position:sticky;top:0}th.l,td.l{text-align:left}
tbody tr:nth-child(even){background:#fafafa}tbody tr:hover{background:#eef5ff}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.82em}
.scroll{max-height:40em;overflow:auto}
"""


def esc(v: Any) -> str:
    """``v`` as text safe inside HTML (all text from records passes through here)."""
    return _html.escape(str(v), quote=True)


def fmt(v: Any, kind: str) -> str:
    """Table formatting (``s`` text, ``int``, ``lr``, ``pct``, else a loss); missing values render as an em dash
    rather than failing."""
    if v is None:
        return "—"
    if kind == "s":
        return str(v)
    x = num(v)
    if x is None:
        return "—"
    if kind == "int":
        return f"{int(x):,}"
    if kind == "lr":
        return f"{x:.3g}"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    return f"{x:.4f}"


def pre(obj: Any) -> str:
    """``obj`` as indented, key-sorted JSON in a ``<pre>`` block."""
    return f"<pre>{esc(json.dumps(obj, indent=1, sort_keys=True, default=str))}</pre>"


def figures_html(figs: list[FigureOut]) -> str:
    """The figures as embedded PNGs with captions, under a heading per trajectory."""
    parts: list[str] = []
    current = None
    for f in figs:
        if f.trajectory != current:
            current = f.trajectory
            parts.append(f"<h3>Trajectory: {esc(current)}</h3>")
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f'<figure id="{esc(f.path.stem)}"><img src="data:image/png;base64,{data}" '
                     f'alt="{esc(f.title)}"><figcaption>{esc(f.caption)} '
                     f"<code>{esc(f.path.name)}</code></figcaption></figure>")
    return "\n".join(parts)
