"""The ``Trajectory``: ordered checkpoints with step, tokens, LR and phase — all that downstream code sees.

Sources here: a qrobust training manifest (``trajectory.json`` in a run folder) and a single checkpoint
folder. Everything is resolved to absolute paths on load.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .io.atomic import write_text
from .names import file_stem, safe_name
from .io.files import STATE_FILE

MANIFEST = "trajectory.json"
FORMAT = "qrobust.trajectory/1"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: str
    step: int
    tokens: int | None = None
    lr: float | None = None
    phase: str | None = None  # warmup | stable | decay | None (unknown)
    run: str = "main"
    parent: str | None = None  # run this one branched from
    parent_step: int | None = None
    repo: str | None = None  # Hugging Face repo id, for hub revisions (path is then "hf://repo@revision")
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trajectory:
    name: str
    checkpoints: list[Checkpoint]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> {schedule, lr_curve, parent, ...}
    data: dict[str, Any] | None = None  # the DataConfig the run was trained with
    source: str = ""
    config: dict[str, Any] | None = None  # the whole training config (seed, optimizer, model), for provenance
    # where facts not read from the checkpoints come from: an open-model preset's family and what is uncertain
    # about it ({"preset": FAMILY, "uncertain": [...]}); never a training data config
    provenance: dict[str, Any] | None = None

    @property
    def preset(self) -> str | None:
        """The open-model preset family this trajectory was resolved from (its checkpoints have no training
        corpus qrobust knows), or None."""
        return (self.provenance or {}).get("preset")

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self):
        return iter(self.checkpoints)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        cks = []
        for c in self.checkpoints:
            d = c.to_dict()
            if relative_to is not None and c.repo is None:
                d["path"] = os.path.relpath(d["path"], relative_to)
            cks.append(d)
        out = {"format": FORMAT, "name": self.name, "data": self.data, "runs": self.runs, "checkpoints": cks}
        if self.config is not None:
            out["config"] = self.config
        if self.provenance is not None:
            out["provenance"] = self.provenance
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path, source: str = "") -> "Trajectory":
        """A manifest's trajectory; its name and run names become file and folder names downstream
        (trajectories/<name>.json, checkpoints/<run>-lawa5/), so a name that would leave them is refused."""
        where = f"in the manifest {source or base}"
        name = safe_name(d["name"], f"trajectory name {where}") if "name" in d else file_stem(base.name, "run")
        cks = []
        for c in d.get("checkpoints", []):
            c = dict(c)
            if not c.get("repo"):
                c["path"] = str((base / c["path"]).resolve())
            if "run" in c:
                safe_name(c["run"], f"run name {where}")
            cks.append(Checkpoint(**c))
        for r in d.get("runs") or {}:
            safe_name(r, f"run name {where}")
        data, provenance = d.get("data"), d.get("provenance")
        if provenance is None and isinstance(data, dict) and "preset" in data:
            data, provenance = None, data  # written before presets had their own field: preset facts, not data
        return cls(name=name, checkpoints=cks, runs=d.get("runs", {}),
                   data=data, source=source, config=d.get("config"), provenance=provenance)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        write_text(p, json.dumps(self.to_dict(relative_to=p.parent), indent=1))
        return p


def load_trajectory(source: str | Path) -> Trajectory:
    """A run folder / manifest file, or one checkpoint folder (a trajectory of one)."""
    p = Path(source)
    if p.is_dir() and (p / MANIFEST).is_file():
        p = p / MANIFEST
    if p.is_file() and p.suffix == ".json":
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"trajectory manifest '{p}' is not valid JSON ({e.msg})") from None
        if d.get("format") != FORMAT:
            raise CheckpointError(f"'{p}' is not a qrobust trajectory manifest (format {d.get('format')!r})")
        return Trajectory.from_dict(d, p.parent, source=str(source))
    if p.is_dir() and (p / "config.json").is_file():
        ck = Checkpoint(name=p.name, path=str(p.resolve()), step=_state_step(p))
        # named after the folder as written ('.' and '..' become the folder they stand for; links not followed)
        return Trajectory(name=file_stem(Path(os.path.abspath(p)).name, "model"), checkpoints=[ck],
                          source=str(source))
    if not p.exists():
        raise CheckpointError(f"trajectory source not found: '{source}'")
    raise CheckpointError(f"'{source}' is neither a run folder with {MANIFEST} nor a model folder with config.json")


def _state_step(p: Path) -> int:
    st = p / STATE_FILE
    if st.is_file():
        return int(json.loads(st.read_text()).get("step", 0))
    return 0
