"""Trajectory sources. Every kind resolves to the same ``Trajectory`` (ordered checkpoints with step,
tokens, LR and phase), so everything downstream is source-agnostic.

Spec strings (``qrobust trajectory list SPEC`` shows what one resolves to), one module per kind:

    RUN_DIR  or  RUN_DIR/trajectory.json   a qrobust training manifest               (local.py)
    MODEL_DIR                              one Hugging Face checkpoint folder        (local.py)
    folders:GLOB   (or any path with * ? [) local checkpoint folders; step = last    (folders.py)
                                           integer of the name, or the first group of ``step_pattern``
    hf:ORG/NAME@REV1,REV2                  revisions of a Hugging Face repo          (hub.py)
    hf:ORG/NAME                            every revision in the local HF cache (plus the Hub's when online)
    preset:NAME                            an open model family (``qrobust/presets``) (presets.py)

and an optional selection suffix ``?every=N``, ``?steps=A,B``, ``?max=N``, ``?run=NAME`` (joined by &).
A new kind is one module with a ``@register_source("kind")`` loader (``registry.py``).
"""
from . import folders, hub, local, presets  # noqa: F401  (each registers its kind)
from .hub import (HUB_PATTERNS, cached_snapshot, hub_cache_dir, hub_offline, hub_revisions, missing_line,
                  not_cached, resolve_checkpoint)
from .presets import lr_at, preset_files, preset_names
from .registry import GLOB_CHARS, SOURCES, SourceSpec, load_source, parse_source, register_source
from .selection import select

__all__ = ["GLOB_CHARS", "HUB_PATTERNS", "SOURCES", "SourceSpec", "cached_snapshot", "hub_cache_dir", "hub_offline",
           "hub_revisions", "load_source", "lr_at", "missing_line", "not_cached", "parse_source", "preset_files",
           "preset_names", "register_source", "resolve_checkpoint", "select"]
