"""Hugging Face hub revisions: ``hf:ORG/NAME@REV1,REV2`` (named revisions) or ``hf:ORG/NAME`` (every
revision in the local HF cache, plus the Hub's when online), and the cache lookups every hub checkpoint
needs. Hub checkpoints are not downloaded when listed: ``resolve_checkpoint`` fetches one when it is
needed, from the local cache when ``HF_HUB_OFFLINE`` is set (then nothing touches the network, a revision
named in ``hf:ORG/NAME@REV`` must be in the cache, and ``not_cached`` tells which listed ones are not).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import CheckpointError, ConfigError
from ..trajectory import Checkpoint, Trajectory
from .registry import SourceSpec, register_source

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def repo_folder(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def cached_snapshot(repo: str, rev: str) -> Path | None:
    """The snapshot folder of ``repo`` at ``rev`` (a ref name or a commit hash) in the local HF cache, or None:
    the same lookup ``snapshot_download`` makes offline (``refs/<rev>`` -> commit -> ``snapshots/<commit>``)."""
    folder = repo_folder(repo)
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
    where = ", ".join(str(repo_folder(r)) for r in repos)
    return (f"{len(missing)} of {total} hub revision(s) are not in the local HF cache ({where}) and HF_HUB_OFFLINE "
            f"is set: {shown}; download them first, select the cached ones (?steps=...), or unset HF_HUB_OFFLINE")


def hub_revisions(repo: str) -> list[str]:
    """Revision names known for ``repo``: refs in the local HF cache, plus branches and tags on the Hub
    when not offline (a failed Hub call falls back to the cache)."""
    names: set[str] = set()
    refs = repo_folder(repo) / "refs"
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


def hub_checkpoint(repo: str, rev: str, step: int, **kw: Any) -> Checkpoint:
    return Checkpoint(name=rev, path=f"hf://{repo}@{rev}", step=step, repo=repo, revision=rev, **kw)


@register_source("hf")
def hub_source(spec: SourceSpec) -> Trajectory:
    repo, _, revs = spec.target.partition("@")
    if repo.count("/") != 1:
        raise ConfigError(f"hub source '{spec.target}' must be ORG/NAME[@REV1,REV2]")
    names = [r for r in revs.split(",") if r] if revs else [r for r in hub_revisions(repo) if r != "main"]
    if not names:
        where = "in the local HF cache (HF_HUB_OFFLINE is set)" if hub_offline() else "in the local HF cache or on the Hub"
        raise CheckpointError(f"no revisions of '{repo}' found {where}; name them: hf:{repo}@REV1,REV2")
    cks = []
    for i, r in enumerate(names):
        m = re.search(r"(\d+)(?!.*\d)", r)
        cks.append(hub_checkpoint(repo, r, int(m.group(1)) if m else i))
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
