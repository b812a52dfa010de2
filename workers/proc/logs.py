"""Container logs in Docker's json-file format: write (supervisor side) and read.

One JSON object per line, byte-compatible with Docker's json-file driver::

    {"log":"hello\\n","stream":"stdout","time":"2026-01-02T03:04:05.123456789Z"}

The string escaping follows Docker's encoder (``<``, ``>``, ``&``, U+2028/9 and
control bytes as ``\\u00XX``, each invalid UTF-8 byte as ``\\ufffd``), the time
is Go's RFC3339Nano (UTC, trailing fraction zeros trimmed), and a line longer
than 16 KiB is split into chunks without a newline, as Docker's copier does.
"""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from workers.proc import process

__all__ = ["MAX_CHUNK", "JsonFileWriter", "encode_entry", "format_time", "parse_time", "read_logs"]

MAX_CHUNK = 16 * 1024
FOLLOW_INTERVAL = 0.05

_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"',
                 ord("\\"): "\\\\", ord("<"): "\\u003c", ord(">"): "\\u003e",
                 ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"})
# surrogateescape turns each invalid byte into one lone surrogate U+DC80..U+DCFF.
_ESCAPES.update({c: "\\ufffd" for c in range(0xDC80, 0xDD00)})


def format_time(ns: int) -> str:
    """Format unix nanoseconds as Go's RFC3339Nano in UTC."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def parse_time(text: str) -> int:
    """Parse an RFC3339(Nano) time (any offset) to unix nanoseconds."""
    if text.endswith(("Z", "z")):
        body, offset = text[:-1], 0
    else:
        body, sign, tz = text[:-6], text[-6], text[-5:]
        offset = (int(tz[:2]) * 3600 + int(tz[3:]) * 60) * (1 if sign == "+" else -1)
    whole, _, frac = body.partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - offset
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def encode_entry(stream: str, data: bytes, ns: int) -> bytes:
    """Encode one log entry as a json-file line."""
    text = data.decode("utf-8", "surrogateescape").translate(_ESCAPES)
    return f'{{"log":"{text}","stream":"{stream}","time":"{format_time(ns)}"}}\n'.encode()


class JsonFileWriter:
    """Append container output to a json-file log, one entry per line."""

    def __init__(self, path: str) -> None:
        """Open (create) the log for appending."""
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._pending: dict[str, bytes] = {}

    def feed(self, stream: str, data: bytes, ns: int | None = None) -> None:
        """Log every complete line of data; keep the rest until more arrives."""
        ns = time.time_ns() if ns is None else ns
        buf = self._pending.pop(stream, b"") + data
        out: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0 or end - start >= MAX_CHUNK:
                if len(buf) - start < MAX_CHUNK:
                    break
                end = start + MAX_CHUNK - 1  # a partial chunk: no newline of its own
            out.append(encode_entry(stream, buf[start:end + 1], ns))
            start = end + 1
        if start < len(buf):
            self._pending[stream] = buf[start:]
        self._write(b"".join(out))

    def flush(self, stream: str, ns: int | None = None) -> None:
        """Log what is left of a stream that ended without a newline."""
        rest = self._pending.pop(stream, b"")
        if rest:
            self._write(encode_entry(stream, rest, time.time_ns() if ns is None else ns))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        """Flush every stream and close the file."""
        for stream in list(self._pending):
            self.flush(stream)
        os.close(self.fd)


class _Entry(msgspec.Struct):
    log: str
    stream: str
    time: str


_decoder = msgspec.json.Decoder(_Entry)


def _tail_offset(f: BinaryIO, lines: int) -> int:
    """Return the offset where the last `lines` complete lines of f start."""
    end = f.seek(0, os.SEEK_END)
    pos, found, block = end, 0, 64 * 1024
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        # The file's final newline ends the last line; it does not start one.
        idx = len(chunk) - (1 if pos + step == end else 0)
        while True:
            idx = chunk.rfind(b"\n", 0, idx)
            if idx < 0:
                break
            found += 1
            if found >= lines:
                return pos + idx + 1
    return 0


def read_logs(path: str, tail: int | None = None, timestamps: bool = False,
              since: int | None = None, follow: bool = False, until: int | None = None,
              state_dir: str | None = None) -> Iterator[tuple[str, str, str]]:
    """Yield (stream, time, line) from a json-file log, optionally following it.

    ``tail`` keeps the last N entries (None = all); ``since``/``until`` are unix
    nanoseconds (entries at or after since, before until); ``timestamps``
    prefixes each line with its time as ``docker logs -t`` does. ``follow`` keeps
    reading new entries until the supervisor in ``state_dir`` (default: the
    log's directory) is gone.
    """
    state_dir = state_dir or os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        if tail is not None:
            if tail <= 0:
                f.seek(0, os.SEEK_END)
            else:
                f.seek(_tail_offset(f, tail))
        rest = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                rest += chunk
                *lines, rest = rest.split(b"\n")
                for raw in lines:
                    try:
                        entry = _decoder.decode(raw)
                    except msgspec.DecodeError:
                        continue  # a torn or foreign line: skip it rather than end the stream
                    if since is not None or until is not None:
                        ns = parse_time(entry.time)
                        if since is not None and ns < since or until is not None and ns >= until:
                            continue
                    line = f"{entry.time} {entry.log}" if timestamps else entry.log
                    yield entry.stream, entry.time, line
                continue
            if not follow:
                return
            if not process.supervisor_alive(state_dir):
                follow = False  # one last read catches what was written before it exited
                continue
            time.sleep(FOLLOW_INTERVAL)
