"""The ``scaling`` verdict: is rising PTQ error a matter of tokens per parameter (the scaling-law camp) or
of the learning-rate decay (the paper)? Every run is one model size trained at constant LR with cooldown
branches; every checkpoint of every run is a point (D/N, decay depth, ΔQ L).

Claims, per variant:
- per size, the paper's F2 at equal D/N: each cooldown's end vs the constant-LR run at the same step
  (the ``cooldown`` kind's comparisons, one claim per size);
- the two forms of :mod:`.scaling_fits` fitted per size and pooled over sizes, compared by their error on
  held-out decayed runs (each cooldown left out in turn). The interval of the held-out gap refits both
  forms on ``N_BOOT_FITS`` block-bootstrap replicates of every record's ΔQ L (the same block indices for
  every record, ``qrobust.stats.indices(n_blocks, B, 0)``); its replicates go out as ``samples``.

N and D: :mod:`.scaling_points`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, QrobustError
from ...stats import CONFIDENCE
from .claims import Stores, by_variant, claim, comparison
from .scaling_figures import scaling_figures
from .scaling_fits import FORMS, Points, fit, held_out_gap, score
from .scaling_points import points, replicates, size_rows
from .spec import merge
from .verdicts import cooldown, register_verdict

N_BOOT_FITS = 200  # bootstrap refits per variant: each refits both forms once per held-out run and scope
MIN_SIZES = 2


def _subset(p: Points, rows: list[dict[str, Any]], size: str | None) -> Points:
    """All points (pooled) or one size's, with unit weights for one size (raw ΔQ L units)."""
    if size is None:
        return p
    keep = np.array([r["size"] == size for r in rows])
    q = p.take(keep)
    return Points(q.x, q.n, q.depth, q.y, np.ones_like(q.y), q.group)


def gap_result(rows: list[dict[str, Any]], size: str | None, n_boot: int) -> dict[str, Any]:
    """Held-out error of the tokens form minus the schedule form's (per size, or pooled with η), its
    bootstrap interval and replicates, and both forms' scores on the point estimates."""
    pooled = size is None
    p = _subset(points(rows), rows, size)
    fits = {f: score(f, pooled, p) for f in FORMS}
    starts = {f: fit(f, pooled, p) for f in FORMS}
    point = fits["tokens"]["held_out"] - fits["schedule"]["held_out"]
    ys = replicates(rows, n_boot)
    samples = np.array([held_out_gap(_subset(points(rows, y), rows, size), pooled, starts) for y in ys])
    ok = samples[np.isfinite(samples)]  # nan: no decayed run to hold out; kept in samples (index-aligned)
    a = (1 - CONFIDENCE) / 2
    lo, hi = (float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a))) if ok.size else (np.nan, np.nan)
    return {"diff": float(point), "low": lo, "high": hi, "paired": True, "samples": samples, "fits": fits,
            "n_boot": int(ok.size), "n_blocks": len(rows[0]["record"].blocks.nll_fp)}


def fit_claims(cell: str, rows: list[dict[str, Any]], n_boot: int) -> list[dict[str, Any]]:
    """The forms compared per size (one comparison each) and pooled over sizes."""
    per = []
    for size in sorted({r["size"] for r in rows if r["decayed"]}):  # a size without a cooldown has nothing to hold out
        res = gap_result(rows, size, n_boot)
        per.append(comparison(f"held-out error, tokens − schedule form, {size}", "tokens", "schedule", res,
                              scope=size, fits=res["fits"], n_boot=res["n_boot"]))
    pooled = []
    if any(r["decayed"] for r in rows):
        res = gap_result(rows, None, n_boot)
        pooled.append(comparison("held-out error, tokens − schedule form, pooled over sizes", "tokens", "schedule",
                                 res, scope="pooled", fits=res["fits"], n_boot=res["n_boot"]))
    text = "the decay term predicts held-out cooldowns better than tokens per parameter alone, at this small scale"
    return [{**claim(f"{text} (per size)", "greater", cell, per), "key": "fit_per_size"},
            {**claim(f"{text} (pooled over sizes)", "greater", cell, pooled), "key": "fit_pooled"}]


def scaling_claims(stores: Stores, n_boot: int = N_BOOT_FITS) -> list[dict[str, Any]]:
    """Per variant: F2 at equal D/N per size, then the fits per size and pooled."""
    claims: list[dict[str, Any]] = []
    cells: dict[str, list[dict[str, Any]]] = {}
    for label, (records, runs_meta) in stores.items():
        for cell, recs in by_variant(records).items():
            cells.setdefault(cell, []).extend(size_rows(label, recs, runs_meta))
        for c in cooldown({label: (records, runs_meta)}):
            claims.append({**c, "cell": f"{c['cell']} @ {label}", "key": "cooldown_equal_dn", "size": label,
                           "claim": "ΔQ L at the end of a cooldown is above the constant-LR run's at the same D/N"})
    for cell, rows in sorted(cells.items()):
        if len({r["size"] for r in rows}) < MIN_SIZES:
            raise QrobustError(f"variant {cell} has records of fewer than {MIN_SIZES} model sizes; the scaling fits "
                               "need every size swept")
        claims += fit_claims(cell, rows, n_boot)
    return claims


def _size_of(spec: Any, label: str) -> tuple[str, str]:
    model = merge(spec.base, spec.runs[label]).get("model") or {}
    return str(model.get("preset", "tiny")), repr(sorted((model.get("overrides") or {}).items()))


def check_scaling(spec: Any, what: str) -> None:
    """At least two model sizes, each run with a decay to compare (cooldown branches or a WSD schedule)."""
    unknown = sorted(set(spec.model_runs or []) - set(spec.runs))
    if unknown:
        raise ConfigError(f"{what}: 'model_runs' names '{unknown[0]}', which is not one of its runs "
                          f"({', '.join(spec.runs)})")
    sizes = {_size_of(spec, label) for label in spec.runs}
    if len(sizes) < MIN_SIZES:
        raise ConfigError(f"{what}: the scaling verdict fits ΔQ L across model sizes: give its runs at least "
                          f"{MIN_SIZES} different 'model: {{preset: ...}}' (it has {len(sizes)})")
    for label in spec.runs:
        cfg = merge(spec.base, spec.runs[label])
        if not cfg.get("branches") and (cfg.get("schedule") or {}).get("kind") != "wsd":
            raise ConfigError(f"{what}: run '{label}' has no decay: give it cooldown 'branches' (or a wsd schedule)")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def scaling_table(spec: Any, claims: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant × scope: both forms' parameters, AIC/BIC and held-out error, and the held-out gap."""
    columns = ["variant", "scope", "points", "tokens: γ", "tokens: AIC / BIC", "tokens: held-out (points)",
               "schedule: γ, δ", "schedule: AIC / BIC", "schedule: held-out (points)",
               "held-out gap tokens − schedule (points)", "lower BIC", "verdict"]
    rows = []
    for c in claims:
        if c.get("key") not in ("fit_per_size", "fit_pooled"):
            continue
        for k in c["comparisons"]:
            t, s = k["fits"]["tokens"], k["fits"]["schedule"]
            eta = f", η {_fmt(t['eta'])}" if "eta" in t else ""
            rows.append([c["cell"], k["scope"], t["n"], _fmt(t["gamma"]) + eta, f"{t['aic']:.1f} / {t['bic']:.1f}",
                         f"{100 * t['held_out']:.3f}", f"{_fmt(s['gamma'])}, {_fmt(s['delta'])}",
                         f"{s['aic']:.1f} / {s['bic']:.1f}", f"{100 * s['held_out']:.3f}",
                         f"{100 * k['diff']:+.3f} [{100 * k['low']:+.3f}, {100 * k['high']:+.3f}]",
                         "schedule" if s["bic"] < t["bic"] else "tokens", c["status"]])
    return {"columns": columns, "rows": rows}


@register_verdict("scaling", figures=scaling_figures, check=check_scaling, table=scaling_table)
def scaling_verdict(spec: Any, stores: Stores) -> list[dict[str, Any]]:
    return scaling_claims(stores, N_BOOT_FITS)


__all__ = ["check_scaling", "gap_result", "scaling_claims", "scaling_table"]
