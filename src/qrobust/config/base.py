"""The base of every config: a pydantic model with ``extra="forbid"``, validated so that an unknown key or a
wrong type becomes one :class:`~qrobust.errors.ConfigError` line naming the key, never a traceback."""
from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from ..errors import ConfigError


class Strict(BaseModel):
    """``omit_if_default``: fields added after records were keyed on a config's dump. They are left out of the
    dump while they hold their default, so every key, manifest and stored config made before they existed
    stays byte-identical."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    omit_if_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any) -> Any:
        out = handler(self)
        if isinstance(out, dict):
            for name in self.omit_if_default:
                if name in out and getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                    del out[name]
        return out


M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, what: str) -> str:
    """Turn pydantic's multi-line report into one line naming the first offending key."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = f"unknown key '{loc}' in {what}; check the spelling against the documented keys"
    elif kind == "missing":
        msg = f"missing required key '{loc}' in {what}"
    else:
        got = first.get("input")
        got_s = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
        msg = f"invalid value for '{loc}' in {what}: {first['msg']}{got_s}"
    n = len(err.errors())
    if n > 1:
        msg += f" [+{n - 1} more problem(s)]"
    return msg


def parse_config(cls: type[M], data: Any, what: str = "config") -> M:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, what)) from None
