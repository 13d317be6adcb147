"""Which quantization variant a record belongs to, in the one spelling of :func:`qrobust.quant.registry.variant_label`.

A group's records split into :class:`Variant` s: the file-name part is the base label (``rtn-w4g128``), with a
short hash of everything else that defines the variant (calibration, include/exclude, options) appended only
when two variants share a base label; the legend label is the record's own ``variant.label``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from ..quant.registry import variant_label
from ..results.records import VariantRecord
from .style import num, slug


@dataclass(frozen=True)
class Variant:
    """One variant's records within a group; ``name`` goes into file names, ``label`` into titles and legends."""
    label: str
    name: str
    recs: list[VariantRecord]


def variant_slug(rec: VariantRecord) -> str:
    v = rec.variant
    return slug(variant_label(v.method, v.bits, v.group_size, v.sym, v.format, v.act, v.kv))


def variant_id(rec: VariantRecord) -> tuple[str, str]:
    """(slug, hash of everything else that defines the variant): calibration, include/exclude, options."""
    v = rec.variant
    extra = {"include": list(v.include), "exclude": list(v.exclude), "options": v.options,
             "calibration": rec.calibration}
    blob = json.dumps(extra, sort_keys=True, default=str)
    return variant_slug(rec), hashlib.sha1(blob.encode()).hexdigest()[:6]


def variant_order(rec: VariantRecord) -> tuple[str, float, float, bool]:
    """Numeric order (w3 before w16, per-channel last) so figure order reads naturally."""
    v = rec.variant
    bits, group = num(v.bits), num(v.group_size)
    return (str(v.method), bits or 0.0, group or math.inf, v.sym is False)


def split_variants(recs: list[VariantRecord]) -> list[Variant]:
    """The records split by variant, in :func:`variant_order`."""
    by_var: dict[tuple[str, str], list[VariantRecord]] = {}
    for r in recs:
        by_var.setdefault(variant_id(r), []).append(r)
    slugs = [k[0] for k in by_var]
    out = []
    for key in sorted(by_var, key=lambda k: (variant_order(by_var[k][0]), k)):
        unique = slugs.count(key[0]) == 1
        label = by_var[key][0].variant.label or key[0]
        out.append(Variant(label if unique else f"{label} [{key[1]}]", key[0] if unique else f"{key[0]}-{key[1]}",
                           by_var[key]))
    return out
