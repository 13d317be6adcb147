"""Claims: several workers (processes or nodes) share one results folder and do each job once.

A claim on job ``K`` is a file ``claims/K.<generation>.json``; the highest generation is the current
claim. Files are published with ``os.link`` from a complete temp file, which fails if the name exists:
of two workers racing for the same generation exactly one wins, on local disks and on NFS alike.
The holder touches its file (a heartbeat thread) every ``ttl/4`` seconds. A claim is stale when its
file is older than ``ttl``, or at once when it belongs to a dead process on this host (``kill -9`` and
restart); a stale claim is taken over by creating the next generation. A worker checks that it still
holds its claim before each unit of work and stops if it does not (it stalled past ``ttl``); records
are deterministic and written atomically, so even then nothing is corrupted.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..errors import write_error
from ..leftovers import pid_alive, tag


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Claim:
    def __init__(self, root: Path, key: str, worker: str, ttl: float = 600.0):
        self.dir = Path(root) / "claims"
        self.key, self.worker, self.ttl = key, worker, ttl
        self.path: Path | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _generations(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.glob(f"{self.key}.*.json"):
            try:
                out.append((int(p.name[len(self.key) + 1: -5]), p))
            except ValueError:
                continue
        return sorted(out)

    def _stale(self, p: Path) -> bool:
        try:
            info = json.loads(p.read_text())
            age = time.time() - p.stat().st_mtime
        except (OSError, json.JSONDecodeError):
            return False  # vanished or being replaced: let the next look decide
        if info.get("worker") == self.worker:
            return False
        if info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", -1))):
            return True
        return age > self.ttl

    def acquire(self) -> bool:
        """True if this worker now holds the claim (fresh, or taken over from a stale holder)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        gens = self._generations()
        if gens and not self._stale(gens[-1][1]):
            return self.held()
        nxt = gens[-1][0] + 1 if gens else 0
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".claim.{tag()}.", dir=self.dir)
        except OSError as e:
            raise write_error(e, self.dir, "claim") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"worker": self.worker, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
        except OSError as e:
            os.unlink(tmp)
            raise write_error(e, self.dir, "claim") from None
        target = self.dir / f"{self.key}.{nxt:06d}.json"
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        self.path = target
        for g, p in gens:  # older generations are history now
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.ttl / 4, 0.05)):
            try:
                if self.path is not None:
                    os.utime(self.path)
            except FileNotFoundError:
                return

    def held(self) -> bool:
        gens = self._generations()
        if not gens:
            return False
        try:
            return json.loads(gens[-1][1].read_text()).get("worker") == self.worker
        except (OSError, json.JSONDecodeError):
            return False

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=1)
        if self.path is not None and self.held():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.path = None
