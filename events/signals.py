"""Parse signal names and numbers as Docker does (`invalid signal: <s>`)."""

from __future__ import annotations

import signal as _signal

__all__ = ["parse_signal", "signal_name"]

# Linux signals by name without the SIG prefix, plus Docker's aliases.
_BY_NAME = {s.name[3:]: int(s) for s in _signal.Signals if s.name.startswith("SIG")
            and not s.name.startswith("SIG_")}
_BY_NAME |= {"CLD": _BY_NAME["CHLD"], "IOT": _BY_NAME["ABRT"], "POLL": _BY_NAME["IO"]}
_RTMIN = int(_signal.SIGRTMIN)
_RTMAX = int(_signal.SIGRTMAX)
_MAX_SIGNAL = 64


def _realtime(name: str) -> int | None:
    """Return RTMIN+n / RTMAX-n as numbers (Docker accepts n up to 15 and 14)."""
    for base, sign, limit in (("RTMIN+", 1, 15), ("RTMAX-", -1, 14)):
        if name.startswith(base) and name[len(base):].isdigit():
            offset = int(name[len(base):])
            if offset <= limit:
                return (_RTMIN if sign > 0 else _RTMAX) + sign * offset
    return None


def parse_signal(value: str | int) -> int:
    """Return the signal number for "SIGTERM", "term", "15" or 15; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid signal: {value}")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        if text.isdigit():
            number = int(text)
        else:
            name = text.upper()
            name = name[3:] if name.startswith("SIG") else name
            found = _BY_NAME.get(name)
            if found is None:
                found = _realtime(name)
            if found is None:
                raise ValueError(f"invalid signal: {value}")
            number = found
    if not 0 < number <= _MAX_SIGNAL:
        raise ValueError(f"invalid signal: {value}")
    return number


def signal_name(number: int) -> str:
    """Return "SIGTERM" for 15, or the number as text when it has no name."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return str(number)
