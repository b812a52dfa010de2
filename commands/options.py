"""Parse docker-run-style options into the config Structs (pure)."""

from __future__ import annotations

import ipaddress
import re

from engine.errors import InvalidParameter
from events.specs import PortBinding

__all__ = [
    "DEFAULT_DETACH_KEYS", "detach_at", "detach_key_bytes", "keys_tail",
    "PROTOS",
    "parse_bytes",
    "parse_cpus",
    "is_duration",
    "parse_duration_ns",
    "parse_env",
    "parse_host_ip",
    "parse_host_port",
    "parse_labels",
    "parse_port_key",
    "parse_publish",
]

PROTOS = ("tcp", "udp", "sctp")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


# --- published ports (`-p`, HostConfig.PortBindings) -----------------------------------
# Error texts follow the docker CLI / dockerd: `invalid proto: x`, `invalid IP address: x`,
# `invalid port specification: "x"`.

def _bad_port(text: str) -> InvalidParameter:
    return InvalidParameter(f'invalid port specification: "{text}"')


def _port_range(text: str, allow_zero: bool) -> tuple[int, int]:
    """Parse "80" or "8000-8010" into an inclusive range; raise on anything else."""
    low, sep, high = text.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise _bad_port(text)
    start, end = int(low), int(high) if sep else int(low)
    if end < start or end > 65535 or (start == 0 and not allow_zero):
        raise _bad_port(text)
    return start, end


def _proto(text: str) -> str:
    proto = (text or "tcp").lower()
    if proto not in PROTOS:
        raise InvalidParameter(f"invalid proto: {proto}")
    return proto


def parse_host_ip(text: str) -> str:
    """Return the canonical form of a binding's host IP ("" stays "": every address)."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidParameter(f"invalid IP address: {text}") from None


def parse_host_port(text: str) -> int:
    """Parse a binding's host port; "" and "0" mean 0, an ephemeral port."""
    if not text:
        return 0
    start, end = _port_range(text, allow_zero=True)
    if start != end:
        raise _bad_port(text)
    return start


def parse_port_key(key: str) -> tuple[int, str]:
    """Parse a port key as HostConfig.PortBindings holds it: "80/tcp" -> (80, "tcp")."""
    port, _, proto = key.partition("/")
    proto = _proto(proto)
    start, end = _port_range(port, allow_zero=False)
    if start != end:
        raise _bad_port(port)
    return start, proto


def _split_parts(raw: str) -> tuple[str, str, str]:
    """Split "[ip:][host:]container[/proto]" the way the docker CLI does (IPv6 ip has colons)."""
    parts = raw.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def parse_publish(spec: str) -> list[tuple[str, PortBinding]]:
    """Parse a `-p [ip:][host:]container[/proto]` spec into (port key, binding) pairs.

    Equal-length ranges expand pairwise ("8000-8001:80-81" publishes two ports); a host
    port of 0 or none is stored as "" (ephemeral).
    """
    ip, host, container = _split_parts(spec.strip())
    cport, _, proto = container.partition("/")
    if not cport:
        raise InvalidParameter(f"no port specified: {spec}<empty>")
    proto = _proto(proto)
    ip = parse_host_ip(ip)
    c_start, c_end = _port_range(cport, allow_zero=False)
    if not host:
        return [(f"{p}/{proto}", PortBinding(host_ip=ip)) for p in range(c_start, c_end + 1)]
    h_start, h_end = _port_range(host, allow_zero=True)
    if h_end - h_start != c_end - c_start:
        if c_start != c_end:
            raise InvalidParameter("invalid ranges specified for container and host Ports: "
                                   f"{cport} and {host}")
        # Docker then allocates one free port from the host range; not implemented.
        raise InvalidParameter(
            f'host port ranges for one container port are not supported: "{spec}"')
    return [(f"{c_start + i}/{proto}",
             PortBinding(host_ip=ip, host_port=str(h_start + i) if h_start + i else ""))
            for i in range(c_end - c_start + 1)]


# --- resources and metadata -------------------------------------------------------------

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


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def is_duration(text: str) -> bool:
    """Tell whether text is a Go-style duration ("10m", "1h30m", "250ms"), as docker's CLI."""
    return bool(_DURATION.match(text.strip()))


def parse_duration_ns(text: str) -> int:
    """Return a Go-style duration ("10m", "1h30m", "250ms") in nanoseconds."""
    value = text.strip()
    if not _DURATION.match(value):
        raise InvalidParameter(f"invalid duration {text!r}: use a duration like 10m or 24h")
    return sum(int(float(num) * _UNIT_NS[unit]) for num, unit in _DURATION_PART.findall(value))


DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q


def detach_key_bytes(keys: str) -> bytes:
    """Parse Docker's detach keys ("ctrl-p,ctrl-q", "a,ctrl-@") into the byte sequence;
    ValueError on anything else (the caller words the error: exec and attach differ)."""
    if not keys:
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for key in keys.split(","):
        if len(key) == 1:
            out.append(ord(key))
        elif key.startswith("ctrl-") and len(key) == 6:
            char = key[5].lower()
            if char == "@" or "a" <= char <= "z" or char in "[\\]^_":
                out.append(ord(char.upper()) & 0x1F if char != "@" else 0)
            else:
                raise ValueError(keys)
        else:
            raise ValueError(keys)
    return bytes(out)


def detach_at(seen: bytes, data: bytes, keys: bytes) -> int | None:
    """Where in ``data`` the detach keys end the input: the count of its bytes before them
    (0 if they began in ``seen``, the bytes read before); None if they are not complete."""
    if not keys:
        return None
    at = (seen + data).find(keys)
    return None if at < 0 else max(0, at - len(seen))


def keys_tail(seen: bytes, data: bytes, keys: bytes) -> bytes:
    """The bytes to remember for the next read: enough to find keys split across reads."""
    return (seen + data)[-(len(keys) - 1):] if len(keys) > 1 else b""
