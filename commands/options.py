"""Parse docker-run-style options into the config Structs (pure)."""

from __future__ import annotations

import re

from engine.errors import InvalidParameter
from events.specs import PortBinding

__all__ = ["parse_bytes", "parse_cpus", "parse_env", "parse_labels", "parse_publish"]

_PUBLISH = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}):)?(?:(?P<host>\d{0,5}):)?(?P<ctr>\d{1,5})"
    r"(?:/(?P<proto>tcp|udp|sctp))?$"
)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_publish(spec: str) -> tuple[str, PortBinding]:
    """Parse `[ip:][host:]container[/proto]` into ("80/tcp", PortBinding)."""
    match = _PUBLISH.match(spec)
    if not match:
        raise InvalidParameter(f'invalid port specification: "{spec}"')
    ctr = int(match["ctr"])
    host = match["host"] or ""
    if not 0 < ctr < 65536 or (host and not 0 < int(host) < 65536):
        raise InvalidParameter(f'invalid port specification: "{spec}"')
    port = f"{ctr}/{match['proto'] or 'tcp'}"
    return port, PortBinding(host_ip=match["ip"] or "", host_port=host)


def parse_bytes(text: str) -> int:
    """Parse Docker's memory sizes: 6m, 1g, 512k, 1048576."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", text.strip().lower())
    if not match:
        raise InvalidParameter(f"invalid size: '{text}'")
    return int(float(match[1]) * _UNITS[match[2]])


def parse_cpus(text: str) -> int:
    """Parse --cpus (e.g. 0.5) into NanoCPUs."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidParameter(f'invalid argument "{text}" for "--cpus" flag') from None
    return int(value * 1e9)


def parse_env(items: list[str]) -> tuple[str, ...]:
    return tuple(items)


def parse_labels(items: list[str]) -> dict[str, str]:
    return dict((item.split("=", 1) + [""])[:2] for item in items)  # type: ignore[misc]
