"""The results store: one JSON file per record, written atomically, keyed by everything that defines it.

Layout of a results folder::

    records/<key>.json       one per (checkpoint, variant, calibration, eval set)
    fp/<key>.json            FP loss per (checkpoint, eval set), so a resumed sweep never re-evaluates it
    trajectories/<name>.json the trajectories swept (schedules, LR curves, training config) for the report
    configs/sweep-<hash>.json every sweep config that wrote here (provenance)

A record file appears whole or not at all (temp file + fsync + rename), so a kill at any moment leaves
only complete records; a re-run skips every key already present. Changing any setting changes the key,
so new settings add records and never overwrite old ones.

A file that is not a valid record (truncated or hand-edited JSON, not an object, no record schema, a key
other than its file name, a folder) counts as missing: readers skip it with a warning naming it, and the
sweep recomputes it and replaces it atomically. Nothing is moved or deleted by a reader: ``results`` and
``report`` must work on read-only copies, and the bad file stays visible, and warned about, until then.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import socket
import stat
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import QrobustError, QrobustWarning
from ..io.atomic import atomic_file, write_text
from ..io.keys import record_key
from ..leftovers import clean as clean_leftovers, tag
from ..names import safe_name
from ..trajectory import Trajectory
from ..version import __version__
from .records import COLUMNS, Record, RecordError, VariantRecord, parse
from .schema import SCHEMA as RECORD_SCHEMA, schema_problem

__all__ = ["RECORD_SCHEMA", "Store", "record_key", "COLUMNS"]
# every folder a sweep writes in a results folder (records kinds, provenance, claims, averaged checkpoints,
# the report, downstream-task work files)
STORE_FOLDERS = ("records", "fp", "geometry", "tasks", "tasks_fp", "trajectories", "configs", "claims",
                 "averaged", "report", "tasks_work")


def versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"qrobust": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version()}


def json_type(d: Any) -> str:
    """JSON's name for the type of parsed value ``d`` (for messages)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(d), "number")


def invalid_record(d: Any, key: str) -> str | None:
    """Why ``d`` (a parsed record file named ``key``.json) is not a record the store wrote; None when it is."""
    if not isinstance(d, dict):
        return f"holds a JSON {json_type(d)}, not a record"
    why = schema_problem(d.get("schema"))
    if why is not None:
        return why
    if d.get("key") != key:
        return f"its key {d.get('key')!r} differs from its file name"
    return None


class Store:
    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        self._warned: set[Path] = set()  # each bad file is reported once per Store
        self._valid: dict[Path, tuple[int, int, int]] = {}  # files known valid, by (inode, mtime, size)
        if create:
            try:
                for sub in ("records", "fp", "trajectories"):
                    (self.root / sub).mkdir(parents=True, exist_ok=True)
                # a private probe name: concurrent workers must not delete each other's probe
                fd, probe = tempfile.mkstemp(prefix=f".write-probe.{tag()}.", dir=self.root)
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
        """True when a valid record is stored under ``key`` (a bad file counts as missing: it is redone)."""
        p = self._path(kind, key)
        try:
            st = p.stat()
        except OSError:
            return False
        if self._valid.get(p) == (st.st_ino, st.st_mtime_ns, st.st_size):
            return True
        return self._load(p) is not None

    def get(self, key: str, kind: str = "records") -> Record | None:
        """The typed record under ``key``; None when there is none or its file is not a valid record."""
        return self._load(self._path(kind, key))

    def _warn(self, p: Path, why: str, then: str = "a sweep with the same settings recomputes it") -> None:
        if p not in self._warned:
            self._warned.add(p)
            warnings.warn(f"skipped '{p}': {why}; {then}", QrobustWarning, stacklevel=3)

    def _read_json(self, p: Path, then: str) -> tuple[Any, bool]:
        """(parsed JSON, True) of file ``p``; (None, False) with a warning when it is not a readable JSON file."""
        try:
            if not stat.S_ISREG(p.stat().st_mode):
                self._warn(p, "not a regular file", then)
                return None, False
            return json.loads(p.read_text()), True
        except FileNotFoundError:
            return None, False  # removed meanwhile (overwritten by a worker): nothing to report
        except OSError as e:
            self._warn(p, f"cannot be read ({e.strerror or e})", then)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            self._warn(p, "not valid JSON (truncated or damaged)", then)
        return None, False

    def _load(self, p: Path) -> Record | None:
        """The typed record in ``p`` if it is one the store wrote (see the module doc), else None (with a
        warning). The folder is the record's kind."""
        try:
            st = p.stat()
        except OSError:
            return None
        d, ok = self._read_json(p, "a sweep with the same settings recomputes it")
        if not ok:
            return None
        why = invalid_record(d, p.stem)
        if why is not None:
            self._warn(p, why)
            return None
        try:
            rec = parse(p.parent.name, d, p.stem)
        except RecordError as e:
            self._warn(p, f"not a valid record: {e}")
            return None
        self._valid[p] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return rec

    def put(self, key: str | Record, record: dict[str, Any] | None = None, kind: str = "records") -> None:
        """Write a typed record (``put(rec)``: its key and kind are its own) or a dict under ``key`` in ``kind``."""
        if isinstance(key, Record):
            key, record, kind = key.key, key.to_dict(), key.KIND
        # the envelope last: what readers check (schema, key = file name) is always the store's own
        record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                  "versions": versions(), **record, "schema": RECORD_SCHEMA, "key": key}
        write_text(self._path(kind, key), json.dumps(record, indent=1, sort_keys=True, allow_nan=True))

    def _all(self, kind: str) -> list[Record]:
        """Every valid record of ``kind``; a bad file is skipped with a warning naming it."""
        out = []
        for p in sorted((self.root / kind).glob("*.json")):
            d = self._load(p)
            if d is not None:
                out.append(d)
        return out

    def records(self) -> list[VariantRecord]:
        """Every valid quantization record, sorted by trajectory, run, step, method, bits, group size."""
        got = [r for r in self._all("records") if isinstance(r, VariantRecord)]
        return sorted(got, key=lambda r: r.order())

    def geometry(self) -> list[Record]:
        """Loss-geometry records (λmax, trace, weight statistics per checkpoint)."""
        return self.side_records("geometry")

    def side_records(self, kind: str) -> list[Record]:
        """Records stored beside the quantization records (``geometry``, ``tasks``), sorted like them."""
        return sorted(self._all(kind), key=lambda r: Record.order(r))

    # -- trajectories --------------------------------------------------------------------------------
    def save_trajectory(self, traj: Trajectory) -> None:
        name = safe_name(traj.name, "trajectory name")  # never a path that leaves trajectories/
        write_text(self.root / "trajectories" / f"{name}.json", json.dumps(traj.to_dict(), indent=1))

    def trajectories(self) -> dict[str, dict[str, Any]]:
        """Stored trajectories by name; a file that is not a JSON object is skipped with a warning."""
        out = {}
        for p in sorted((self.root / "trajectories").glob("*.json")):
            d, ok = self._read_json(p, "the next sweep of this trajectory rewrites it")
            if ok and not isinstance(d, dict):
                self._warn(p, f"holds a JSON {json_type(d)}, not a trajectory",
                           "the next sweep of this trajectory rewrites it")
            elif ok:
                out[p.stem] = d
        return out

    # -- sweep configs -------------------------------------------------------------------------------
    def save_config(self, cfg: dict[str, Any]) -> None:
        """Keep every sweep config that wrote here (one file per distinct config), for the report's provenance."""
        blob = json.dumps(cfg, sort_keys=True, default=str)
        path = self.root / "configs" / f"sweep-{hashlib.sha1(blob.encode()).hexdigest()[:12]}.json"
        if not path.is_file() or self._config(path, quiet=True) is None:  # missing, or damaged: (re)write it
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(cfg, indent=1, sort_keys=True, default=str))

    def _config(self, p: Path, quiet: bool = False) -> dict[str, Any] | None:
        then = "the next sweep with this config rewrites it"
        if quiet:
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                return None
            return d if isinstance(d, dict) else None
        d, ok = self._read_json(p, then)
        if ok and not isinstance(d, dict):
            self._warn(p, f"holds a JSON {json_type(d)}, not a sweep config", then)
        return d if ok and isinstance(d, dict) else None

    def configs(self) -> list[dict[str, Any]]:
        """Stored sweep configs, oldest first; unreadable files are skipped with a warning."""
        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0
        got = (self._config(p) for p in sorted((self.root / "configs").glob("sweep-*.json"), key=mtime))
        return [d for d in got if d is not None]

    # -- leftovers -----------------------------------------------------------------------------------
    def clean(self) -> list[Path]:
        """Remove temporary files and folders a killed writer left in the results folder (only those whose
        writer is certainly gone: see :mod:`qrobust.leftovers`); returns what was removed. Only the folders
        qrobust writes are looked through: ``out`` may be a folder holding much else."""
        removed = clean_leftovers(self.root, recursive=False)
        for sub in STORE_FOLDERS:
            removed += clean_leftovers(self.root / sub)
        return removed

    # -- export --------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.records()]

    def export(self, fmt: str, path: str | Path | None = None) -> str:
        rows = self.rows()
        if fmt == "json":
            text = json.dumps([r.to_dict() for r in self.records()], indent=1)
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
            write_text(Path(path), text)
        return text

    @staticmethod
    def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise QrobustError("parquet export needs pyarrow (pip install pyarrow); use csv or json") from None
        try:
            table = pa.Table.from_pylist(rows, schema=None) if rows else pa.table({c: [] for c in COLUMNS})
        except pa.ArrowException as e:  # one column holding a number in one record and text in another
            raise QrobustError(f"cannot export to parquet: {str(e).splitlines()[0]}; use csv or json") from None
        with atomic_file(path, "parquet export") as tmp:
            pq.write_table(table, str(tmp))

