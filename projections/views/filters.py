"""Docker-style filter arguments: parsing (`k=v` flags or the API's JSON) and matching helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from engine.errors import InvalidParameter

__all__ = [
    "Filters",
    "check_keys",
    "fuzzy_match",
    "match_kv",
    "parse_filter_flags",
    "parse_filters_json",
    "regex_match",
]

Filters = dict[str, list[str]]


def parse_filter_flags(flags: Iterable[str] | None) -> Filters:
    """Parse repeated `--filter key=value` flags (key lowercased, as the docker CLI does)."""
    result: Filters = {}
    for flag in flags or ():
        if "=" not in flag:
            raise InvalidParameter("bad format of filter (expected name=value)")
        key, value = flag.split("=", 1)
        result.setdefault(key.strip().lower(), []).append(value.strip())
    return result


def parse_filters_json(text: str | bytes | None) -> Filters:
    """Parse the Engine API's `filters` query value: {"k":["v"]} or {"k":{"v":true}}."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidParameter(f"invalid filters: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidParameter("invalid filters: expected a JSON object")
    result: Filters = {}
    for key, values in raw.items():
        if isinstance(values, list):
            result[key] = [str(v) for v in values]
        elif isinstance(values, dict):
            result[key] = [str(v) for v, on in values.items() if on]
        else:
            raise InvalidParameter(f"invalid filters: values of '{key}' must be a list or map")
    return result


def check_keys(filters: Mapping[str, list[str]], valid: Iterable[str]) -> None:
    """Raise Docker's `invalid filter '<key>'` for a key outside `valid`."""
    allowed = set(valid)
    for key in filters:
        if key not in allowed:
            raise InvalidParameter(f"invalid filter '{key}'")


def regex_match(patterns: list[str], value: str) -> bool:
    """Return whether any pattern matches (re.search); an invalid regex matches as text."""
    for pattern in patterns:
        if pattern == value:
            return True
        try:
            if re.search(pattern, value):
                return True
        except re.error:
            if pattern in value:
                return True
    return False


def fuzzy_match(patterns: list[str], value: str) -> bool:
    """Return whether any pattern equals value or is a prefix of it (Docker's FuzzyMatch)."""
    return any(value == p or (p and value.startswith(p)) for p in patterns)


def match_kv(patterns: list[str], labels: Mapping[str, str]) -> bool:
    """Return whether every `key` or `key=value` pattern holds (Docker's MatchKVList: all)."""
    for pattern in patterns:
        key, sep, value = pattern.partition("=")
        if key not in labels:
            return False
        if sep and labels[key] != value:
            return False
    return True
