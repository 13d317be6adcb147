"""YAML text and files from users (configs, sweeps, experiments, presets): duplicate keys refused, every
problem one :class:`~qrobust.errors.ConfigError` line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .base import M, parse_config


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML silently keeps the last).

    Keys brought in by a ``<<`` merge may still be overridden: only keys written in the mapping itself count."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base loader names that error
                continue
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, what: str) -> Any:
    """YAML text from a user (config, sweep, experiment or preset file) -> data; a duplicate key or a syntax
    error is one ConfigError line naming ``what``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{what}: key '{e.key}' is given twice in one mapping (lines {e.first} and {e.second}); "
                          "keep one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = parse_yaml(p.read_text(), f"config file {p}")
    return data if data is not None else {}


def load_config(cls: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    data = load_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return parse_config(cls, data, what=f"config {path}")
