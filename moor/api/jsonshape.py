"""Read the JSON shapes of Docker's request bodies, with one text per wrong shape (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidParameter

__all__ = ["json_object", "string_list"]


def json_object(value: Any, name: str) -> Mapping[str, Any]:
    """An object field: null reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"invalid JSON: {name} must be an object")
    return value


def string_list(value: Any, name: str) -> tuple[str, ...]:
    """A list-of-strings field: null reads as empty."""
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidParameter(f"invalid JSON: {name} must be a list of strings")
