"""Points in the journal: stream ids, times, and their text forms (pure; the clock is passed in).

A stream id is Redis's "<ms>-<seq>". The id's ms is when the reducer recorded the event;
`meta.at` is when the causing command was issued. `--since/--until` given as a time select
by the recorded time, so they translate to stream-id bounds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from commands.options import is_duration, parse_duration_ns
from engine.errors import InvalidParameter

__all__ = [
    "MAX_SEQ",
    "ZERO_TIME",
    "Point",
    "after_time_id",
    "human_duration",
    "id_key",
    "id_ms",
    "is_stream_id",
    "parse_point",
    "parse_time",
    "rfc3339_millis",
    "rfc3339_nano",
]

MAX_SEQ = 2**64 - 1
ZERO_TIME = "0001-01-01T00:00:00Z"
_NS = 1_000_000_000
_ID = re.compile(r"^(\d+)(?:-(\d+))?$")
_FULL_ID = re.compile(r"^\d+-\d+$")
_UNIX = re.compile(r"^(\d+)(?:\.(\d{1,9}))?$")
_FRACTION = re.compile(r"\.(\d+)")


def is_stream_id(text: str) -> bool:
    """Return whether text is a complete stream id ("<ms>-<seq>")."""
    return bool(_FULL_ID.match(text))


def id_key(stream_id: str, *, upper: bool = False) -> tuple[int, int]:
    """Return a sortable (ms, seq); a bare "<ms>" means its first (or last, if upper) seq."""
    match = _ID.match(stream_id)
    if match is None:
        raise InvalidParameter(f"invalid stream id: {stream_id!r}")
    seq = match.group(2)
    return int(match.group(1)), int(seq) if seq is not None else (MAX_SEQ if upper else 0)


def id_ms(stream_id: str) -> int:
    """Return the recorded time (unix ms) of a stream id."""
    return id_key(stream_id)[0]


def after_time_id(ns: int) -> str:
    """Return the exclusive cursor after which entries are recorded at or after `ns`."""
    ms = ns // 1_000_000
    return f"{ms - 1}-{MAX_SEQ}" if ms > 0 else "0-0"


def rfc3339_nano(ns: int) -> str:
    """Format unix ns like Go's RFC3339Nano in UTC (trailing zeros trimmed; zero time for 0)."""
    if ns <= 0:
        return ZERO_TIME
    seconds, fraction = divmod(ns, _NS)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def rfc3339_millis(ns: int) -> str:
    """Format unix ns as RFC3339 UTC with milliseconds (fixed width, for log-like lines)."""
    seconds, fraction = divmod(max(ns, 0), _NS)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction // 1_000_000:03d}Z"


def human_duration(ns: int) -> str:
    """Return Docker's rounded duration text ("Less than a second", "3 minutes", "2 days")."""
    seconds = ns // _NS
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(ns / (3600 * _NS) + 0.5)  # Docker rounds hours to the nearest
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{seconds // 3600 // 24 // 365} years"


def parse_time(text: str, now_ns: int) -> int:
    """Return unix ns for unix seconds ("1700000000.5"), RFC3339, a date, or a duration ago."""
    value = text.strip()
    if is_duration(value):
        return now_ns - parse_duration_ns(value)
    unix = _UNIX.match(value)
    if unix is not None:
        return int(unix.group(1)) * _NS + int((unix.group(2) or "0").ljust(9, "0"))
    try:
        return _parse_iso(value)
    except ValueError:
        raise InvalidParameter(
            f"invalid time {text!r}: use unix seconds, RFC3339 or a duration like 10m") from None


def _parse_iso(value: str) -> int:
    # datetime keeps microseconds only: carry the full fraction separately.
    fraction = _FRACTION.search(value)
    nanos = int(fraction.group(1)[:9].ljust(9, "0")) if fraction else 0
    plain = _FRACTION.sub("", value, count=1) if fraction else value
    parsed = datetime.fromisoformat(plain.replace("Z", "+00:00").replace("z", "+00:00"))
    # A time without a zone is local time, as in the docker CLI.
    seconds = int(parsed.timestamp())
    return seconds * _NS + nanos


class Point:
    """A --since/--until argument: either a stream id or a time (unix ns)."""

    __slots__ = ("stream_id", "ns")

    def __init__(self, stream_id: str | None = None, ns: int | None = None) -> None:
        self.stream_id = stream_id
        self.ns = ns

    def start_bound(self) -> str:
        """Return an inclusive XRANGE start: the id itself, or the first id at that time."""
        if self.stream_id is not None:
            return self.stream_id
        return str((self.ns or 0) // 1_000_000)

    def end_bound(self) -> str:
        """Return an inclusive XRANGE end: the id itself, or the last id of that ms."""
        if self.stream_id is not None:
            return self.stream_id
        return str(max(self.ns or 0, 0) // 1_000_000)

    def key(self, *, upper: bool) -> tuple[int, int]:
        """Return the comparable (ms, seq) of the bound."""
        bound = self.end_bound() if upper else self.start_bound()
        return id_key(bound, upper=upper)

    def __repr__(self) -> str:
        return f"Point(stream_id={self.stream_id!r}, ns={self.ns!r})"


def parse_point(text: str, now_ns: int) -> Point:
    """Parse a --since/--until value: a stream id ("1700000000000-3") or a time."""
    if is_stream_id(text.strip()):
        return Point(stream_id=text.strip())
    return Point(ns=parse_time(text, now_ns))
