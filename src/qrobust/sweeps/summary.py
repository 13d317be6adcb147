"""What one sweep worker did: the counts the CLI prints and the executors add up."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
