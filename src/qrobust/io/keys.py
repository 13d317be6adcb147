"""Stable keys: the short hash that names every record, eval set and claim.

It lives on floor 1 because both the data sets (an eval set's id) and the results store (a record's key)
need it, and the same parts must always give the same key, across processes and qrobust versions:
changing this function would orphan every stored record.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def record_key(parts: dict[str, Any]) -> str:
    """20 hex digits of the SHA-1 of ``parts`` as canonical JSON (sorted keys, no spaces, ``str`` for the rest)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]
