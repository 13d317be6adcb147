"""Verdicts that survive another seed: each seed's claims pooled into one claim per finding and variant.

Every seed's comparisons are computed exactly as with one seed (same rules, same block indices), so seed s
alone would give the verdict a single-seed run gives. Pooling matches claims by (claim, variant) and their
comparisons by what they compare, and replaces each comparison's difference by the mean over seeds with the
interval of :func:`qrobust.stats.pool_seeds` (training noise and evaluation noise, the block noise that all
seeds share counted once). The per-seed differences stay beside the pooled one (``seeds``), and a claim only
counts a comparison as pointing the expected way when every seed does (:func:`.claims.expected_way`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...stats import pool_seeds
from .claims import claim

Claims = list[dict[str, Any]]


def strip(claims: Claims) -> Claims:
    """The claims without the bootstrap replicates they carried for pooling (JSON-ready)."""
    return [{**c, "comparisons": [{k: v for k, v in x.items() if k != "_boot"} for x in c["comparisons"]]}
            for c in claims]


def _seed_entry(seed: int, c: dict[str, Any]) -> dict[str, Any]:
    return {"seed": seed, **{k: c[k] for k in ("diff", "low", "high", "for", "against")}}


def _mean_extras(comps: list[dict[str, Any]]) -> dict[str, Any]:
    """Extra fields of a comparison (ΔQ L of each side, FP losses, ...): the seed mean where they are
    non-integer numbers that differ between seeds, the first seed's value otherwise."""
    out = {}
    for k, v in comps[0].items():
        vals = [c.get(k) for c in comps]
        floats = all(isinstance(x, float) for x in vals)
        out[k] = float(np.mean(vals)) if floats and len(set(vals)) > 1 else v
    return out


def pool_comparison(seeds: list[int], comps: list[dict[str, Any]]) -> dict[str, Any]:
    """One comparison measured on every seed, pooled (fields as a single-seed comparison, plus ``seeds``, the
    per-seed differences, and the interval's ``se``, ``df``, ``var_between``, ``var_shared``)."""
    boots = [c["_boot"] for c in comps]
    pooled = pool_seeds([c["diff"] for c in comps], [b[0] for b in boots], n_blocks=min(b[1] for b in boots))
    base = {k: v for k, v in _mean_extras(comps).items() if k != "_boot"}
    return {**base, "diff": pooled["diff"], "low": pooled["low"], "high": pooled["high"],
            "paired": all(c["paired"] for c in comps), "for": pooled["low"] > 0, "against": pooled["high"] < 0,
            "seeds": [_seed_entry(s, c) for s, c in zip(seeds, comps)],
            **{k: pooled[k] for k in ("se", "df", "var_between", "var_shared")}}


def _key(c: dict[str, Any]) -> tuple[str, str]:
    return c["claim"], c["cell"]


def pool_claims(seeds: list[int], per_seed: list[Claims]) -> Claims:
    """One claim per (claim, variant) of the first seed, over the comparisons every seed made; each claim
    also says how each seed alone would be judged (``seed_status``). One seed: its claims, stripped."""
    if len(per_seed) == 1:
        return strip(per_seed[0])
    index = [{_key(c): c for c in claims} for claims in per_seed]
    out = []
    for c0 in per_seed[0]:
        mine = [ix.get(_key(c0)) for ix in index]
        if any(m is None for m in mine):
            continue
        whats = [{x["what"]: x for x in m["comparisons"]} for m in mine]  # type: ignore[index]
        comps = [pool_comparison(seeds, [w[x["what"]] for w in whats]) for x in c0["comparisons"]
                 if all(x["what"] in w for w in whats)]
        extra = {k: v for k, v in c0.items() if k not in claim("", c0["kind"], "", [])}
        out.append({**claim(c0["claim"], c0["kind"], c0["cell"], comps), **extra,
                    "seed_status": {str(s): m["status"] for s, m in zip(seeds, mine)}})  # type: ignore[index]
    return out


def signs(c: dict[str, Any]) -> str:
    """A pooled comparison's per-seed signs, e.g. ``++−``."""
    return "".join("+" if s["diff"] > 0 else "−" if s["diff"] < 0 else "0" for s in c.get("seeds", ()))
