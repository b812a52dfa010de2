"""Parse signal names and numbers as Docker does (`invalid signal: <s>`)."""

from __future__ import annotations

import signal as _signal

__all__ = ["parse_signal", "signal_name"]

# Linux signals by name without the SIG prefix; realtime signals are accepted by number.
_BY_NAME = {s.name[3:]: int(s) for s in _signal.Signals if s.name.startswith("SIG")
            and not s.name.startswith("SIG_")}
_MAX_SIGNAL = 64


def parse_signal(value: str | int) -> int:
    """Return the signal number for "SIGTERM", "term", "15" or 15; raise ValueError otherwise."""
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        if text.isdigit():
            number = int(text)
        else:
            name = text.upper()
            name = name[3:] if name.startswith("SIG") else name
            if name not in _BY_NAME:
                raise ValueError(f"invalid signal: {value}")
            number = _BY_NAME[name]
    if not 0 < number <= _MAX_SIGNAL:
        raise ValueError(f"invalid signal: {value}")
    return number


def signal_name(number: int) -> str:
    """Return "SIGTERM" for 15, or the number as text when it has no name."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return str(number)
