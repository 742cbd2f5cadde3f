"""What every config part shares: the error type, the check, and building dataclasses from plain dicts."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A config that cannot describe a buildable model; the message names the field and the fix."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)



def from_plain(kind: type, raw: Any, where: str) -> Any:
    """Build a (nested) dataclass from a dict, refusing unknown keys."""
    if not dataclasses.is_dataclass(kind):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = {name: _field_type(kind, name) for name in raw}
    return kind(**{k: from_plain(hints[k], v, f"{where}.{k}") for k, v in raw.items()})


def _field_type(kind: type, name: str) -> Any:
    default = next(f for f in dataclasses.fields(kind) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None



def _field_type(kind: type, name: str) -> Any:
    default = next(f for f in dataclasses.fields(kind) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None
