"""``OUT/summary.md``: every experiment's claims in one markdown table (the README's results table is this
file): status, each comparison's (pooled) difference with its 95 % interval, and each comparison's per-seed
signs when the verdict pools several seeds. Rebuilt from the ``verdict.json`` files, so it accumulates."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...io.atomic import write_text
from .seeds import signs

HEAD = ["experiment", "claim", "variant", "status", "A − B, 95 % interval (per comparison)", "per-seed signs"]


def diff_text(k: dict[str, Any]) -> str:
    """A compact difference and interval: percentage points of ΔQ L, or nats for losses."""
    if k.get("unit") == "nats":
        return f"{k['diff']:+.3f} [{k['low']:+.3f}, {k['high']:+.3f}] nats"
    return f"{100 * k['diff']:+.2f} [{100 * k['low']:+.2f}, {100 * k['high']:+.2f}]"


def claim_row(experiment: str, c: dict[str, Any]) -> list[str]:
    comps = c["comparisons"]
    seeds = " ".join(signs(k) for k in comps) if comps and comps[0].get("seeds") else "—"
    return [experiment, c["claim"], c["cell"], f"**{c['status']}**", "; ".join(diff_text(k) for k in comps) or "—",
            seeds]


def summary_markdown(verdicts: list[dict[str, Any]]) -> str:
    """The table over ``verdicts`` (verdict.json contents), with the seeds each was pooled over."""
    rows = [claim_row(v["experiment"], c) for v in verdicts for c in v["claims"]]
    pooled = sorted({tuple(v["seeds"]) for v in verdicts if v.get("seeds")})
    note = ("Pooled over training " + "; ".join("seeds " + ", ".join(map(str, s)) for s in pooled) + ": intervals "
            "cover training and evaluation noise." if pooled else "One training seed: intervals cover evaluation "
            "noise only.")
    lines = [f"{note} Differences: ΔQ L(A) − ΔQ L(B) in percentage points unless in nats.", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(out: Path) -> Path:
    """Write ``OUT/summary.md`` from every ``OUT/<name>/verdict.json`` (unreadable ones skipped: the page index
    already warns about them)."""
    found = []
    for vf in sorted(out.glob("*/verdict.json")):
        try:
            found.append(json.loads(vf.read_text()))
        except (OSError, ValueError):
            continue
    path = out / "summary.md"
    write_text(path, summary_markdown(found))
    return path
