"""The results store: one JSON file per record, written atomically, keyed by everything that defines it.

Layout of a results folder::

    records/<key>.json       one per (checkpoint, variant, calibration, eval set)
    fp/<key>.json            FP loss per (checkpoint, eval set), so a resumed sweep never re-evaluates it
    trajectories/<name>.json the trajectories swept (schedules, LR curves, training config) for the report
    configs/sweep-<hash>.json every sweep config that wrote here (provenance)

A record file appears whole or not at all (temp file + fsync + rename), so a kill at any moment leaves
only complete records; a re-run skips every key already present. Changing any setting changes the key,
so new settings add records and never overwrite old ones.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import QrobustError, write_error
from ..trajectory import Trajectory, atomic_write_text

RECORD_SCHEMA = "qrobust.record/1"

# Flat columns for CSV / tables, in order. Nested values are looked up by dotted path.
COLUMNS = [
    "trajectory", "checkpoint.name", "checkpoint.run", "checkpoint.step", "checkpoint.tokens", "checkpoint.lr",
    "checkpoint.phase", "variant.method", "variant.bits", "variant.group_size", "variant.sym",
    "metrics.loss_fp", "metrics.loss_q", "metrics.dq_rel", "metrics.dq_abs", "metrics.ppl_fp", "metrics.ppl_q",
    "metrics.dq_ci.low", "metrics.dq_ci.high", "metrics.dq_ci.se",
    "weight_error.rel_err_mean", "eval_set.id", "eval_set.n_tokens", "timings.quantize_s", "timings.eval_s", "key",
]


def record_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    from .. import __version__
    return {"qrobust": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version()}


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def flatten(rec: dict[str, Any]) -> dict[str, Any]:
    return {c: _get(rec, c) for c in COLUMNS}


class Store:
    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        if create:
            try:
                for sub in ("records", "fp", "trajectories"):
                    (self.root / sub).mkdir(parents=True, exist_ok=True)
                # a private probe name: concurrent workers must not delete each other's probe
                fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=self.root)
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise QrobustError(f"cannot write to results folder '{self.root}': {e.strerror}; "
                                   "choose a writable --out") from None
        elif not (self.root / "records").is_dir():
            raise QrobustError(f"'{self.root}' is not a qrobust results folder (no records/ inside)")

    # -- records -------------------------------------------------------------------------------------
    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def has(self, key: str, kind: str = "records") -> bool:
        return self._path(kind, key).is_file()

    def get(self, key: str, kind: str = "records") -> dict[str, Any] | None:
        p = self._path(kind, key)
        if not p.is_file():
            return None
        return json.loads(p.read_text())

    def put(self, key: str, record: dict[str, Any], kind: str = "records") -> None:
        record = {"schema": RECORD_SCHEMA, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "host": socket.gethostname(), "versions": versions(), **record}
        atomic_write_text(self._path(kind, key), json.dumps(record, indent=1, sort_keys=True, allow_nan=True))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "records").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:  # impossible with atomic writes, but never crash a report on it
                continue
        out.sort(key=lambda r: (r.get("trajectory", ""), _get(r, "checkpoint.run") or "",
                                _get(r, "checkpoint.step") or 0, _get(r, "variant.method") or "",
                                _get(r, "variant.bits") or 0, _get(r, "variant.group_size") or 0))
        return out

    def geometry(self) -> list[dict[str, Any]]:
        """Loss-geometry records (λmax, trace, weight statistics per checkpoint)."""
        return self.side_records("geometry")

    def side_records(self, kind: str) -> list[dict[str, Any]]:
        """Records stored beside the quantization records (``geometry``, ``tasks``), sorted like them."""
        out = []
        for p in sorted((self.root / kind).glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
        out.sort(key=lambda r: (r.get("trajectory", ""), _get(r, "checkpoint.run") or "",
                                _get(r, "checkpoint.step") or 0))
        return out

    # -- trajectories --------------------------------------------------------------------------------
    def save_trajectory(self, traj: Trajectory) -> None:
        atomic_write_text(self.root / "trajectories" / f"{traj.name}.json", json.dumps(traj.to_dict(), indent=1))

    def trajectories(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in sorted((self.root / "trajectories").glob("*.json"))}

    # -- sweep configs -------------------------------------------------------------------------------
    def save_config(self, cfg: dict[str, Any]) -> None:
        """Keep every sweep config that wrote here (one file per distinct config), for the report's provenance."""
        blob = json.dumps(cfg, sort_keys=True, default=str)
        path = self.root / "configs" / f"sweep-{hashlib.sha1(blob.encode()).hexdigest()[:12]}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cfg, indent=1, sort_keys=True, default=str))

    def configs(self) -> list[dict[str, Any]]:
        """Stored sweep configs, oldest first; unreadable files are skipped."""
        out = []
        for p in sorted((self.root / "configs").glob("sweep-*.json"), key=lambda p: p.stat().st_mtime):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    # -- export --------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        return [flatten(r) for r in self.records()]

    def export(self, fmt: str, path: str | Path | None = None) -> str:
        rows = self.rows()
        if fmt == "json":
            text = json.dumps(self.records(), indent=1)
        elif fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            text = buf.getvalue()
        elif fmt == "parquet":
            if path is None:
                raise QrobustError("parquet export needs an output file (--out FILE.parquet)")
            self._write_parquet(rows, Path(path))
            return f"wrote {len(rows)} rows to {path}\n"
        else:
            raise QrobustError(f"unknown export format '{fmt}'; use csv, json or parquet")
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @staticmethod
    def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise QrobustError("parquet export needs pyarrow (pip install pyarrow); use csv or json") from None
        table = pa.Table.from_pylist(rows, schema=None) if rows else pa.table({c: [] for c in COLUMNS})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise write_error(e, path, "parquet export") from None
            raise

