"""``preset:NAME``: an open model family's public checkpoints, from the data files in ``qrobust/presets``
(repo, revision naming, tokens per step, schedule facts). The LR and phase of a checkpoint come from the
:class:`~qrobust.schedules.Schedule` those facts describe (the one home of the LR formulas)."""
from __future__ import annotations

import re
from importlib import resources
from typing import Any

from ..config import parse_yaml
from ..errors import CheckpointError, ConfigError
from ..schedules import Schedule, preset_schedule
from ..trajectory import Checkpoint, Trajectory
from .hub import hub_checkpoint, hub_offline, hub_revisions
from .registry import SourceSpec, register_source


def preset_files() -> dict[str, dict[str, Any]]:
    """family -> preset data (from the YAML files shipped in qrobust/presets)."""
    out = {}
    for f in resources.files("qrobust.presets").iterdir():
        if f.name.endswith(".yaml"):
            d = parse_yaml(f.read_text(), f"preset file {f.name}")
            out[d["family"]] = d
    return out


def preset_names() -> dict[str, tuple[str, str]]:
    """model name -> (family, repo)."""
    return {name: (fam, m["repo"]) for fam, d in preset_files().items() for name, m in d["models"].items()}


def lr_at(schedule: dict[str, Any], peak: float | None, step: int) -> tuple[float | None, str | None]:
    """(LR, phase) at ``step`` from a preset's schedule facts; (None, None) where they do not say."""
    return _at(preset_schedule(schedule, peak), step)


def _at(s: Schedule | None, step: int) -> tuple[float | None, str | None]:
    return (None, None) if s is None else (s.lr(step), s.phase(step))


def generated_steps(items: list[Any]) -> list[int]:
    """Steps listed in a preset (integers and ``{range: [first, last, stride]}``), sorted and unique."""
    steps: list[int] = []
    for it in items:
        if isinstance(it, dict):
            a, b, s = it["range"]
            steps.extend(range(a, b + 1, s))
        else:
            steps.append(int(it))
    return sorted(set(steps))


def _generated(d: dict[str, Any], repo: str, sched: Schedule | None) -> list[Checkpoint]:
    """Checkpoints whose revision names a preset generates from its step list."""
    gen, per_step = d["revisions"]["generate"], d.get("tokens_per_step")
    cks = []
    for s in generated_steps(gen["steps"]):
        lr, phase = _at(sched, s)
        cks.append(hub_checkpoint(repo, gen["name"].format(step=s), s, tokens=s * per_step if per_step else None,
                                  lr=lr, phase=phase))
    return cks


def _matched(d: dict[str, Any], repo: str, sched: Schedule | None) -> list[Checkpoint]:
    """Checkpoints from the repo's revisions whose names match one of the preset's patterns (first wins)."""
    per_step = d.get("tokens_per_step")
    pats = [(re.compile(p["regex"]), p) for p in d["revisions"]["patterns"]]
    cks = []
    for rev in hub_revisions(repo):
        for rx, p in pats:
            m = rx.match(rev)
            if not m:
                continue
            g = m.groupdict()
            step = int(g["step"])
            tokens = int(g["tokens_b"]) * 10 ** 9 if g.get("tokens_b") else (step * per_step if per_step else None)
            lr, phase = _at(sched, step)
            cks.append(hub_checkpoint(repo, rev, step, tokens=tokens, lr=lr, phase=phase or p.get("phase"),
                                      run=p.get("run", "main").format(**g), parent=p.get("parent")))
            break
    return cks


@register_source("preset")
def preset_source(spec: SourceSpec) -> Trajectory:
    name = spec.target
    known = preset_names()
    if name not in known:
        raise ConfigError(f"unknown preset '{name}'; known: {', '.join(sorted(known))}")
    family, repo = known[name]
    d = preset_files()[family]
    peak = d["models"][name].get("peak_lr")
    facts = d.get("schedule", {})
    sched = preset_schedule(facts, peak)
    cks = _generated(d, repo, sched) if "generate" in d["revisions"] else _matched(d, repo, sched)
    if not cks and "generate" not in d["revisions"]:
        where = "the local HF cache (HF_HUB_OFFLINE is set)" if hub_offline() else "the local HF cache or the Hub"
        raise CheckpointError(f"preset '{name}': no revisions of '{repo}' matching its naming found in {where}")
    cks.sort(key=lambda c: (c.run != "main", c.run, c.step))
    runs: dict[str, dict[str, Any]] = {"main": {"peak_lr": peak, "schedule": facts}}
    runs.update({c.run: {"parent": c.parent} for c in cks if c.run != "main"})
    # preset facts are provenance, not a training data config: the checkpoints' corpus is not known here
    return Trajectory(name=name, checkpoints=cks, runs=runs,
                      provenance={"preset": family, "uncertain": d.get("uncertain", [])})
