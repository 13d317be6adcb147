"""The outputs of ``qrobust predictors``: per predictor, ρ and τ against the measured ΔQ L pooled over every
checkpoint and per run (trajectory + run), with bootstrap intervals, and the measured cost ratio; written as
``summary.json`` (everything), ``values.csv`` (one row per checkpoint and predictor) and a predictor-vs-truth
figure, and printed as a table. Each row also carries the noise ceiling (the ρ a perfect predictor can expect
against measured values with their bootstrap noise: `predictor_stats.noise_ceiling`). The report shows the same folder as its "Predictors" section."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from ..io.atomic import write_text
from ..monitor.predictors import PREDICTORS
from ..reporting.predictors import FIGURE_STEM, draw_predictors, ratio_text
from .predictor_stats import agreement, cost_ratio, noise_ceiling

Target = Any  # a workflows.predictors.Target (not imported: that module imports this one)

SCHEMA = "qrobust.predictors/1"
CSV_NAME = "values.csv"
CSV_COLUMNS = ["store", "trajectory", "run", "checkpoint", "step", "path", "target", "truth", "truth_se",
               "truth_seconds", "predictor", "value", "seconds"]


def truth_seconds(t: Target) -> float | None:
    """Seconds the measured value cost: the record's quantization + evaluation."""
    q, e = t.record.timings.get("quantize_s"), t.record.timings.get("eval_s")
    return float(q) + float(e) if q is not None and e is not None else None


def truth_se(t: Target) -> float | None:
    """The record's paired-bootstrap standard error of ΔQ L (its evaluation noise), when stored."""
    ci = t.record.metrics.dq_ci
    return float(ci.se) if ci is not None and ci.se is not None else None


def points(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One row per (checkpoint, predictor key) with a finite value: what the CSV, statistics and figure use."""
    rows = []
    for t in targets:
        ck = t.record.checkpoint
        for key, v in t.values.items():
            if v is None or not math.isfinite(v):
                continue
            rows.append({"store": t.store, "trajectory": t.record.trajectory, "run": ck.run, "checkpoint": ck.name,
                         "step": ck.step, "path": ck.path, "target": t.label, "truth": t.record.metrics.dq_rel,
                         "truth_se": truth_se(t), "truth_seconds": truth_seconds(t), "predictor": key, "value": v,
                         "seconds": t.seconds.get(key)})
    return rows


def run_of(p: dict[str, Any]) -> str:
    return f"{p['trajectory']}/{p['run']}" if p["trajectory"] else str(p["run"])


def row(pts: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """ρ, τ (with intervals), n and the cost ratio of one predictor key over ``pts``."""
    a = agreement([p["value"] for p in pts], [p["truth"] for p in pts], settings["n_boot"], settings["seed"],
                  settings["confidence"])
    secs = [p["seconds"] for p in pts if p["seconds"] is not None and math.isfinite(p["seconds"])]
    ses = [p["truth_se"] for p in pts]
    ceiling = (noise_ceiling([p["truth"] for p in pts], ses, settings["n_boot"], settings["seed"])
               if all(s is not None for s in ses) else None)
    return {**a.to_dict(), "cost_ratio": cost_ratio([p["truth_seconds"] for p in pts], [p["seconds"] for p in pts]),
            "seconds_median": statistics.median(secs) if secs else None, "ceiling": ceiling}


def analyse(pts: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pooled rows, per-run rows), ordered by target, then predictor as asked, then run."""
    order = {n: i for i, n in enumerate(settings["predictors"])}
    keys = sorted({(p["target"], p["predictor"]) for p in pts},
                  key=lambda k: (k[0], order.get(k[1].split("/")[0], len(order)), k[1]))
    pooled, runs = [], []
    for target, key in keys:
        mine = [p for p in pts if p["target"] == target and p["predictor"] == key]
        name = key.split("/")[0]
        head = {"target": target, "predictor": key, "name": name, "cost": PREDICTORS[name].cost
                if name in PREDICTORS else None}
        pooled.append({**head, **row(mine, settings)})
        for run in sorted({run_of(p) for p in mine}):
            runs.append({**head, "run": run, **row([p for p in mine if run_of(p) == run], settings)})
    return pooled, runs


def coef_text(v: float | None, ci: Sequence[float] | None) -> str:
    if v is None:
        return "—"
    return f"{v:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{v:+.3f}"


def table_text(table: list[dict[str, Any]]) -> str:
    """The printed table: predictor, ρ [low, high], τ [low, high], cost ratio, n."""
    head = ("target", "predictor", "ρ [95% CI]", "τ [95% CI]", "cost ratio", "n", "ρ ceiling")
    lines = [(r["target"], r["predictor"], coef_text(r["rho"], r["rho_ci"]), coef_text(r["tau"], r["tau_ci"]),
              ratio_text(r["cost_ratio"]), str(r["n"]), coef_text(r.get("ceiling"), None)) for r in table]
    widths = [max(len(c) for c in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [head, *lines])


def csv_text(pts: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(pts)
    return buf.getvalue()


def write_outputs(targets: Sequence[Target], names: list[str], folder: Path, settings: dict[str, Any],
                  work: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json``, ``values.csv`` and the figure(s) into ``folder``; return the summary."""
    pts = points(targets)
    table, runs = analyse(pts, settings)
    figs = draw_predictors(pts, table, folder)
    summary = {"schema": SCHEMA, "settings": settings, "n_checkpoints": len({t.record.checkpoint.path for t in targets}),
               "skipped": work["skipped"], "computed": work["computed"], "table": table, "runs": runs,
               "predictors": {n: {"cost": PREDICTORS[n].cost, "per_variant": PREDICTORS[n].per_variant,
                                  "doc": PREDICTORS[n].doc} for n in names},
               "csv": CSV_NAME, "figures": [f.path.name for f in figs], "text": table_text(table)}
    write_text(folder / CSV_NAME, csv_text(pts), "predictor values")
    write_text(folder / "summary.json", json.dumps(summary, indent=1, default=str), "predictor summary")
    return summary


__all__ = ["FIGURE_STEM", "SCHEMA", "analyse", "points", "table_text", "write_outputs"]
