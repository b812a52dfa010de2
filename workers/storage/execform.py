"""Dockerfile's JSON ("exec") form, shared by `docker commit --change` and the builder (pure)."""

from __future__ import annotations

import json

__all__ = ["json_form"]


def json_form(rest: str) -> list[str] | None:
    """The words of a JSON array of strings (`["sh", "-c", "x"]`), or None when `rest` is
    not one (then the instruction's shell form applies)."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None
