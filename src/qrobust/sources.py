"""Trajectory sources. Every kind resolves to the same ``Trajectory`` (ordered checkpoints with step,
tokens, LR and phase), so everything downstream is source-agnostic.

Spec strings (``qrobust trajectory list SPEC`` shows what one resolves to):

    RUN_DIR  or  RUN_DIR/trajectory.json   a qrobust training manifest
    MODEL_DIR                              one Hugging Face checkpoint folder
    folders:GLOB   (or any path with * ? [) local checkpoint folders; step = last integer of the name,
                                           or the first group of ``step_pattern``
    hf:ORG/NAME@REV1,REV2                  revisions of a Hugging Face repo
    hf:ORG/NAME                            every revision in the local HF cache (plus the Hub's when online)
    preset:NAME                            an open model family (data files in ``qrobust/presets``)

and an optional selection suffix ``?every=N``, ``?steps=A,B``, ``?max=N``, ``?run=NAME`` (joined by &).
Hub checkpoints are not downloaded when listed: ``resolve_checkpoint`` fetches one when it is needed,
from the local cache when ``HF_HUB_OFFLINE`` is set (then nothing touches the network, a revision named
in ``hf:ORG/NAME@REV`` must be in the cache, and ``not_cached`` tells which listed ones are not).
"""
from __future__ import annotations

import builtins
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .config import parse_yaml
from .errors import CheckpointError, ConfigError
from .names import file_stem
from .trajectory import Checkpoint, Trajectory, load_trajectory as load_local

GLOB_CHARS = "*?["
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


# ------------------------------------------------------------------------------------------------ entry
def load_source(spec: str | Path | dict[str, Any]) -> Trajectory:
    """Resolve a source spec (string, path, or ``{source: ..., step_pattern: ..., every: ...}``)."""
    opts: dict[str, Any] = {}
    if isinstance(spec, dict):
        opts = dict(spec)
        if "source" not in opts:
            raise ConfigError("a trajectory given as a mapping needs 'source' (e.g. {source: 'preset:pythia-160m'})")
        spec = opts.pop("source")
    text = str(spec)
    base, query = text, ""
    head, _, tail = text.partition("?")
    # a selection query on a prefixed spec, or on a local folder (when the '?' is not part of its name)
    if text.startswith(("preset:", "hf:", "folders:")) or (tail and not Path(text).exists() and Path(head).exists()):
        base, query = head, tail
    opts.update(_parse_query(query))
    step_pattern = opts.pop("step_pattern", None)
    if base.startswith("preset:"):
        traj = _preset(base[len("preset:"):])
    elif base.startswith("hf:"):
        traj = _hub(base[len("hf:"):])
    elif base.startswith("folders:") or (any(c in base for c in GLOB_CHARS) and not Path(base).exists()):
        traj = _folders(base[len("folders:"):] if base.startswith("folders:") else base, step_pattern)
    else:
        traj = load_local(base)
    traj.source = text
    return select(traj, **opts)


def _parse_query(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key in ("every", "max"):
            try:
                out[key] = int(value)
            except ValueError:
                raise ConfigError(f"trajectory selection '{key}' needs an integer, got '{value}'") from None
        elif key == "steps":
            try:
                out[key] = [int(v) for v in value.split(",") if v]
            except ValueError:
                raise ConfigError(f"trajectory selection 'steps' needs integers, got '{value}'") from None
        elif key in ("run", "step_pattern"):
            out[key] = value
        else:
            raise ConfigError(f"unknown trajectory selection '{key}'; known: every, steps, max, run, step_pattern")
    return out


def select(traj: Trajectory, every: int | None = None, steps: list[int] | None = None, max: int | None = None,
           run: str | None = None) -> Trajectory:
    """A subset of the checkpoints, order kept: by run, by step list, every N steps, or the N nearest to
    evenly spaced steps."""
    cks = list(traj.checkpoints)
    if run is not None:
        cks = [c for c in cks if c.run == run]
    if steps is not None:
        wanted = set(steps)
        cks = [c for c in cks if c.step in wanted]
    if every is not None:
        if every < 1:
            raise ConfigError("trajectory selection 'every' must be >= 1")
        last = {c.run: c.step for c in cks}
        cks = [c for c in cks if c.step % every == 0 or c.step == last[c.run]]
    if max is not None and len(cks) > max:
        if max < 1:
            raise ConfigError("trajectory selection 'max' must be >= 1")
        lo, hi = min(c.step for c in cks), builtins.max(c.step for c in cks)
        targets = [lo + i * (hi - lo) / (max - 1) for i in range(max)] if max > 1 else [hi]
        chosen: list[int] = []
        for t in targets:  # the checkpoint nearest to each evenly spaced step (earlier wins a tie)
            free = [i for i in range(len(cks)) if i not in chosen]
            chosen.append(min(free, key=lambda i: (abs(cks[i].step - t), i)))
        cks = [cks[i] for i in sorted(chosen)]
    if not cks:
        raise ConfigError(f"the selection leaves no checkpoint of '{traj.name}' ({len(traj)} before selecting)")
    return Trajectory(name=traj.name, checkpoints=cks, runs=traj.runs, data=traj.data, source=traj.source,
                      config=traj.config, provenance=traj.provenance)


# ------------------------------------------------------------------------------------------------ folders
def _folders(pattern: str, step_pattern: str | None) -> Trajectory:
    root = Path(pattern).anchor or "."
    rel = str(Path(pattern).relative_to(root)) if Path(pattern).is_absolute() else pattern
    dirs = sorted(p for p in Path(root).glob(rel) if p.is_dir() and (p / "config.json").is_file())
    if not dirs:
        raise CheckpointError(f"no checkpoint folders (with config.json) match '{pattern}'")
    rx = re.compile(step_pattern) if step_pattern else None
    cks = []
    for d in dirs:
        m = rx.search(d.name) if rx else re.search(r"(\d+)(?!.*\d)", d.name)
        if m is None:
            how = f"step_pattern '{step_pattern}'" if rx else "a number"
            raise CheckpointError(f"cannot read a step from folder name '{d.name}' (expected {how}); "
                                  "set step_pattern to a regex whose first group is the step")
        cks.append(Checkpoint(name=d.name, path=str(d.resolve()), step=int(m.group(1) if m.groups() else m.group(0))))
    cks.sort(key=lambda c: c.step)
    steps = [c.step for c in cks]
    if len(set(steps)) != len(steps):
        dup = next(s for s in steps if steps.count(s) > 1)
        raise CheckpointError(f"two folders matching '{pattern}' have step {dup}; narrow the glob or fix step_pattern")
    return Trajectory(name=file_stem(Path(pattern).parent.name, "folders"), checkpoints=cks)


# ------------------------------------------------------------------------------------------------ hub
def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _repo_folder(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def cached_snapshot(repo: str, rev: str) -> Path | None:
    """The snapshot folder of ``repo`` at ``rev`` (a ref name or a commit hash) in the local HF cache, or None:
    the same lookup ``snapshot_download`` makes offline (``refs/<rev>`` -> commit -> ``snapshots/<commit>``)."""
    folder = _repo_folder(repo)
    if not rev or ".." in Path(rev).parts:
        return None
    ref = folder / "refs" / rev
    try:
        commit = ref.read_text().strip() if ref.is_file() else rev
    except OSError:
        return None
    snap = folder / "snapshots" / commit
    return snap if re.fullmatch(r"[0-9a-f]{40}", commit) and snap.is_dir() else None


def not_cached(cks: Iterable[Checkpoint]) -> list[Checkpoint]:
    """Hub checkpoints that cannot be had while ``HF_HUB_OFFLINE`` is set (not in the local cache); none
    when online, where a missing one is fetched."""
    if not hub_offline():
        return []
    return [c for c in cks if c.repo is not None and cached_snapshot(c.repo, c.revision or "") is None]


def missing_line(missing: list[Checkpoint], total: int) -> str:
    """One line naming hub checkpoints missing from the offline cache (the first few, then a count)."""
    names = [f"{c.repo}@{c.revision}" for c in missing]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    repos = sorted({c.repo for c in missing})
    where = ", ".join(str(_repo_folder(r)) for r in repos)
    return (f"{len(missing)} of {total} hub revision(s) are not in the local HF cache ({where}) and HF_HUB_OFFLINE "
            f"is set: {shown}; download them first, select the cached ones (?steps=...), or unset HF_HUB_OFFLINE")


def hub_revisions(repo: str) -> list[str]:
    """Revision names known for ``repo``: refs in the local HF cache, plus branches and tags on the Hub
    when not offline (a failed Hub call falls back to the cache)."""
    names: set[str] = set()
    refs = _repo_folder(repo) / "refs"
    if refs.is_dir():
        names |= {str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()}
    if not hub_offline():
        try:
            from huggingface_hub import HfApi
            r = HfApi().list_repo_refs(repo)
            names |= {b.name for b in r.branches} | {t.name for t in r.tags}
        except Exception:  # no network, private repo, ...: the cache is what we have
            pass
    return sorted(names)


def _hub_checkpoint(repo: str, rev: str, step: int, **kw: Any) -> Checkpoint:
    return Checkpoint(name=rev, path=f"hf://{repo}@{rev}", step=step, repo=repo, revision=rev, **kw)


def _hub(spec: str) -> Trajectory:
    repo, _, revs = spec.partition("@")
    if repo.count("/") != 1:
        raise ConfigError(f"hub source '{spec}' must be ORG/NAME[@REV1,REV2]")
    names = [r for r in revs.split(",") if r] if revs else [r for r in hub_revisions(repo) if r != "main"]
    if not names:
        where = "in the local HF cache (HF_HUB_OFFLINE is set)" if hub_offline() else "in the local HF cache or on the Hub"
        raise CheckpointError(f"no revisions of '{repo}' found {where}; name them: hf:{repo}@REV1,REV2")
    cks = []
    for i, r in enumerate(names):
        m = re.search(r"(\d+)(?!.*\d)", r)
        cks.append(_hub_checkpoint(repo, r, int(m.group(1)) if m else i))
    missing = not_cached(cks) if revs else []  # named revisions must exist; listed ones come from the cache
    if missing:
        raise CheckpointError(missing_line(missing, len(cks)))
    cks.sort(key=lambda c: c.step)
    return Trajectory(name=repo.split("/")[1], checkpoints=cks)


def resolve_checkpoint(ck: Checkpoint, allow_pickle: bool = False) -> Path:
    """The local folder of a checkpoint; a Hub revision is fetched into (or found in) the HF cache."""
    if ck.repo is None:
        return Path(ck.path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    patterns = HUB_PATTERNS + (["*.bin", "*.pt"] if allow_pickle else [])
    try:
        return Path(snapshot_download(ck.repo, revision=ck.revision, cache_dir=hub_cache_dir(),
                                      local_files_only=hub_offline(), allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"'{ck.repo}' revision '{ck.revision}' is not in the local HF cache ({hub_cache_dir()}) "
                              "and HF_HUB_OFFLINE is set; download it first or unset HF_HUB_OFFLINE") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot fetch '{ck.repo}' revision '{ck.revision}': {first}") from None


# ------------------------------------------------------------------------------------------------ presets
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


def _generated_steps(items: list[Any]) -> list[int]:
    steps: list[int] = []
    for it in items:
        if isinstance(it, dict):
            a, b, s = it["range"]
            steps.extend(range(a, b + 1, s))
        else:
            steps.append(int(it))
    return sorted(set(steps))


def lr_at(schedule: dict[str, Any], peak: float | None, step: int) -> tuple[float | None, str | None]:
    """(LR, phase) at ``step`` from a preset's schedule facts; (None, None) where they do not say."""
    kind = schedule.get("kind")
    if peak is None:
        return None, None
    if kind == "cosine":
        total = schedule["total_steps"]
        warm = schedule.get("warmup_steps", round(schedule.get("warmup_frac", 0.0) * total))
        final = schedule.get("final_lr_ratio", 0.0) * peak
        if step < warm:
            return peak * step / warm, "warmup"
        t = min(1.0, (step - warm) / max(total - warm, 1))
        return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * t)), "decay"
    if kind == "wsd" and "decay_start" in schedule:
        warm, start, end = schedule.get("warmup_steps", 0), schedule["decay_start"], schedule["decay_end"]
        final = schedule.get("final_lr_ratio", 0.0) * peak
        if step < warm:
            return peak * step / warm, "warmup"
        if step < start:
            return peak, "stable"
        frac = min(1.0, (step - start) / max(end - start, 1))
        shape = 1 - math.sqrt(frac) if schedule.get("decay") == "1-sqrt" else 1 - frac
        return final + (peak - final) * shape, "decay"
    return None, None


def _preset(name: str) -> Trajectory:
    known = preset_names()
    if name not in known:
        raise ConfigError(f"unknown preset '{name}'; known: {', '.join(sorted(known))}")
    family, repo = known[name]
    d = preset_files()[family]
    model = d["models"][name]
    peak = model.get("peak_lr")
    sched = d.get("schedule", {})
    per_step = d.get("tokens_per_step")
    revs = d["revisions"]
    cks: list[Checkpoint] = []
    if "generate" in revs:
        for s in _generated_steps(revs["generate"]["steps"]):
            lr, phase = lr_at(sched, peak, s)
            cks.append(_hub_checkpoint(repo, revs["generate"]["name"].format(step=s), s,
                                       tokens=s * per_step if per_step else None, lr=lr, phase=phase))
    else:
        pats = [(re.compile(p["regex"]), p) for p in revs["patterns"]]
        for rev in hub_revisions(repo):
            for rx, p in pats:
                m = rx.match(rev)
                if not m:
                    continue
                g = m.groupdict()
                step = int(g["step"])
                tokens = int(g["tokens_b"]) * 10 ** 9 if g.get("tokens_b") else (step * per_step if per_step else None)
                lr, phase = lr_at(sched, peak, step)
                cks.append(_hub_checkpoint(repo, rev, step, tokens=tokens, lr=lr, phase=phase or p.get("phase"),
                                           run=p.get("run", "main").format(**g), parent=p.get("parent")))
                break
        if not cks:
            where = "the local HF cache (HF_HUB_OFFLINE is set)" if hub_offline() else "the local HF cache or the Hub"
            raise CheckpointError(f"preset '{name}': no revisions of '{repo}' matching its naming found in {where}")
    cks.sort(key=lambda c: (c.run != "main", c.run, c.step))
    runs = {"main": {"peak_lr": peak, "schedule": sched}}
    runs.update({c.run: {"parent": c.parent} for c in cks if c.run != "main"})
    # preset facts are provenance, not a training data config: the checkpoints' corpus is not known here
    return Trajectory(name=name, checkpoints=cks, runs=runs,
                      provenance={"preset": family, "uncertain": d.get("uncertain", [])})
