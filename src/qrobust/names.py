"""Names that become file or folder names: one check, so nothing is ever written outside the folder the user
named.

A run, trajectory, branch, averaged run or experiment name comes from a config or a manifest someone else may
have written; joined to a folder (``trajectories/<name>.json``, ``checkpoints/<run>/``) a name such as
``../../x`` or ``/tmp/x`` would leave it. :func:`safe_name` refuses such names where they are read (config
parsing, manifest loading) and again where they are joined to a folder; :func:`file_stem` maps a name taken
from the file system itself (a folder's own name) to one that passes.
"""
from __future__ import annotations

import re

from .errors import ConfigError

_ALLOWED = "use letters, digits and '-', '_', '.' (not first), without '/'"


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be used as one file or folder name inside a folder, or None when it can."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if name.startswith("."):
        return "it starts with '.'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "it holds a control character"
    if len(name.encode()) > 200:
        return "it is longer than 200 bytes"
    return None


def safe_name(name: object, what: str) -> str:
    """``name`` unchanged when it is one plain file name; else one :class:`ConfigError` line naming ``what``."""
    why = name_problem(name)
    if why is not None:
        raise ConfigError(f"{what} {name!r} cannot name a file or folder ({why}); {_ALLOWED}")
    return name  # type: ignore[return-value]


def check_name(name: str | None, what: str = "name") -> str | None:
    """A pydantic validator body: ValueError (shown as one config line) for a name that is not a plain file
    name; None passes (the default name is used)."""
    if name is None:
        return None
    why = name_problem(name)
    if why is not None:
        raise ValueError(f"{what} {name!r} cannot name a file or folder ({why}); {_ALLOWED}")
    return name


def file_stem(name: str, default: str = "x") -> str:
    """A name derived from the file system (a folder's own name) made safe: separators and control
    characters become '_', leading dots go; a name that already passes is returned unchanged."""
    if name_problem(name) is None:
        return name
    s = re.sub(r"[/\\\x00-\x1f\x7f]", "_", str(name)).lstrip(".")
    return s.encode()[:200].decode(errors="ignore") or default
