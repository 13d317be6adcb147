"""What one sweep worker did: the counts the CLI prints and the executors add up, and where its time went."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..results.timings import PHASE_NAMES, PHASES, variant_phases


@dataclass
class SweepSummary:
    out: Path
    checkpoints: int = 0
    records_written: int = 0
    records_skipped: int = 0
    model_loads: int = 0
    fp_evals: int = 0
    geometry: int = 0  # checkpoints whose loss geometry this worker measured
    task_evals: int = 0  # (checkpoint, variant) downstream-task evaluations this worker ran
    averaged: int = 0  # averaged checkpoints this worker made (sweeps with an 'average' list)
    claimed_elsewhere: int = 0  # checkpoint groups another worker held when this one reached them
    lost_claims: int = 0  # groups this worker stopped because its claim went stale and was taken over
    left_groups: int = 0  # groups still held by live workers when this one gave up waiting (re-run to finish)
    left_records: int = 0  # quantization records missing in those groups
    seconds: float = 0.0
    new_keys: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # this worker's time by phase (PHASES)
    variant_seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> phase -> s, and "n"

    def add_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + seconds

    def add_variant(self, label: str, timings: Mapping[str, float]) -> None:
        """One written variant record's own time (``variant_phases``), by variant and in the phase totals."""
        mine = self.variant_seconds.setdefault(label, {"n": 0})
        mine["n"] += 1
        for phase, s in variant_phases(timings).items():
            mine[phase] = mine.get(phase, 0.0) + s
            self.add_phase(phase, s)

    def merge(self, part: Mapping[str, Any]) -> None:
        """Add another worker's summary (its fields as a dict; ``checkpoints`` and ``out`` are not added)."""
        for f in fields(self):
            if f.name in ("out", "checkpoints", "seconds", "new_keys") or f.name not in part:
                continue
            if f.name == "phase_seconds":
                for k, v in part[f.name].items():
                    self.add_phase(k, v)
            elif f.name == "variant_seconds":
                for label, d in part[f.name].items():
                    mine = self.variant_seconds.setdefault(label, {"n": 0})
                    for k, v in d.items():
                        mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + part[f.name])

    def time_lines(self) -> list[str]:
        """Where the time went, for the CLI: the phases (and what fell outside them), then per variant."""
        if not self.phase_seconds:
            return []
        parts = [f"{PHASE_NAMES[p]} {self.phase_seconds[p]:.1f} s" for p in PHASES if p in self.phase_seconds]
        other = self.seconds - sum(self.phase_seconds.values())
        lines = ["time by phase: " + ", ".join(parts) + (f", other {other:.1f} s" if self.seconds and other > 0 else "")]
        for label, d in sorted(self.variant_seconds.items()):
            n = int(d["n"])
            each = ", ".join(f"{PHASE_NAMES[p]} {d.get(p, 0.0) / n:.2f} s" for p in ("calibration", "quantize", "eval"))
            lines.append(f"  {label}: {n} record{'s' if n != 1 else ''}, per checkpoint {each}")
        return lines
