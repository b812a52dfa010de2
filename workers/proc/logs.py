"""Container logs in Docker's json-file format: write (supervisor side) and read.

One JSON object per line, byte-compatible with Docker's json-file driver::

    {"log":"hello\\n","stream":"stdout","time":"2026-01-02T03:04:05.123456789Z"}

The string escaping follows Docker's encoder (``<``, ``>``, ``&``, U+2028/9 and
control bytes as ``\\u00XX``, each invalid UTF-8 byte as ``\\ufffd``), the time
is Go's RFC3339Nano (UTC, trailing fraction zeros trimmed), and a line longer
than 16 KiB is split into chunks without a newline, as Docker's copier does.

Rotation follows Docker's loggerutils.LogFile: before each entry, a file that has
reached ``max_size`` is shifted to ``.1`` (``.1`` to ``.2``…, the oldest beyond
``max_file - 1`` dropped), or truncated when ``max_file`` is 1. Readers walk the
rotated files oldest first, then the live one.
"""

from __future__ import annotations

import calendar
import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import msgspec

from workers.proc import process

__all__ = ["MAX_CHUNK", "NO_READING", "JsonFileWriter", "details_prefix", "encode_entry",
           "fixed_time", "format_time", "log_files", "parse_time", "read_logs"]

MAX_CHUNK = 16 * 1024
# moby's logger.ErrReadLogsNotSupported (an errdefs.NotImplemented: HTTP 501).
NO_READING = "configured logging driver does not support reading"
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


def fixed_time(stamp: str) -> str:
    """Re-render an entry's time with all nine fraction digits, as `docker logs -t` shows it."""
    ns = parse_time(stamp)
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"


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


def _attrs_json(attrs: Mapping[str, str]) -> str:
    # Go's json.Marshal of a map: keys sorted, the same string escaping.
    items = (f'"{k.translate(_ESCAPES)}":"{v.translate(_ESCAPES)}"'
             for k, v in sorted(attrs.items()))
    return f',"attrs":{{{",".join(items)}}}' if attrs else ""


def encode_entry(stream: str, data: bytes, ns: int, attrs: str = "") -> bytes:
    """Encode one log entry as a json-file line (``attrs``: the pre-encoded attrs member)."""
    text = data.decode("utf-8", "surrogateescape").translate(_ESCAPES)
    return f'{{"log":"{text}","stream":"{stream}"{attrs},"time":"{format_time(ns)}"}}\n'.encode()


class JsonFileWriter:
    """Append container output to a json-file log, one entry per line, rotating it.

    ``max_size`` -1 never rotates; ``discard`` (the none driver) creates the file, so
    readers that wait for it do not hang, and writes nothing.
    """

    def __init__(self, path: str, max_size: int = -1, max_file: int = 1,
                 attrs: Mapping[str, str] | None = None, discard: bool = False) -> None:
        """Open (create) the log for appending."""
        self.path, self.max_size, self.max_file, self.discard = path, max_size, max_file, discard
        self.fd = self._open(os.O_APPEND)
        self.size = os.fstat(self.fd).st_size
        self._attrs = _attrs_json(attrs or {})
        self._pending: dict[str, bytes] = {}

    def _open(self, mode: int) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | mode, 0o640)

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
            out.append(encode_entry(stream, buf[start:end + 1], ns, self._attrs))
            start = end + 1
        if start < len(buf):
            self._pending[stream] = buf[start:]
        if self.max_size < 0:
            self._write(b"".join(out))
        else:
            for entry in out:
                self._write(entry)

    def flush(self, stream: str, ns: int | None = None) -> None:
        """Log what is left of a stream that ended without a newline."""
        rest = self._pending.pop(stream, b"")
        if rest:
            ns = time.time_ns() if ns is None else ns
            self._write(encode_entry(stream, rest, ns, self._attrs))

    def _write(self, data: bytes) -> None:
        if self.discard or not data:
            return
        if 0 <= self.max_size <= self.size:
            self._rotate()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(data)

    def _rotate(self) -> None:
        """Shift the full file to .1 (and .1 to .2…), as Docker does before an entry."""
        os.close(self.fd)
        for n in range(self.max_file - 1, 0, -1):
            older = f"{self.path}.{n - 1}" if n > 1 else self.path
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{n}")
        self.fd = self._open(os.O_TRUNC | os.O_APPEND)
        self.size = 0

    def close(self) -> None:
        """Flush every stream and close the file."""
        for stream in list(self._pending):
            self.flush(stream)
        os.close(self.fd)


class _Entry(msgspec.Struct):
    log: str
    stream: str
    time: str
    attrs: dict[str, str] = {}


_decoder = msgspec.json.Decoder(_Entry)


def log_files(path: str) -> list[str]:
    """Return a json-file log's rotated files, oldest first, then the live one.

    Listed from the directory, not by counting up: a rotation in progress leaves a gap.
    """
    folder, base = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except FileNotFoundError:
        names = []
    numbers = sorted((int(n[len(base) + 1:]) for n in names
                      if n.startswith(base + ".") and n[len(base) + 1:].isdigit()), reverse=True)
    return [f"{path}.{n}" for n in numbers] + [path]


def details_prefix(attrs: Mapping[str, str]) -> str:
    """Render attrs as `docker logs --details` does: k=v query-escaped, sorted, then a space."""
    q = urllib.parse.quote_plus
    return ",".join(f"{q(k)}={q(v)}" for k, v in sorted(attrs.items())) + " "


def _tail_offset(f: BinaryIO, lines: int) -> tuple[int, int]:
    """Return (offset where the last `lines` complete lines of f start, lines found)."""
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
                return pos + idx + 1, found
    return 0, found + (1 if end else 0)


def _seek_tail(files: list[BinaryIO], tail: int) -> list[BinaryIO]:
    """Position the files so that the last `tail` entries remain; return those to read."""
    if tail <= 0:
        files[-1].seek(0, os.SEEK_END)
        return files[-1:]
    for i in range(len(files) - 1, -1, -1):
        offset, found = _tail_offset(files[i], tail)
        files[i].seek(offset)
        tail -= found
        if tail <= 0:
            return files[i:]
    return files


def _same_file(f: BinaryIO, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return True  # the writer is between rename and create: keep the old one for now


def _unseen(path: str, seen: set[int]) -> list[tuple[str, int]]:
    """List (name, inode) of the log's files not read yet, oldest first."""
    out = []
    for name in log_files(path):
        try:
            ino = os.stat(name).st_ino
        except FileNotFoundError:
            continue  # shifted by a rotation while listing
        if ino not in seen:
            out.append((name, ino))
    return out


def _open_next(path: str, seen: set[int]) -> BinaryIO | None:
    """Open the oldest file not read yet; several rotations may pass between two polls.

    Files are told apart by inode (names shift on every rotation); a listing is trusted
    once a second one agrees, so a rotation racing the listing cannot skip a file.
    """
    for _ in range(50):
        first, again = _unseen(path, seen), _unseen(path, seen)
        if not first or not again:
            return None  # the log is gone (the container was removed)
        if first[0] != again[0]:
            continue
        name, ino = first[0]
        try:
            f = open(name, "rb")  # noqa: SIM115 - read_logs closes it
        except FileNotFoundError:
            continue
        if os.fstat(f.fileno()).st_ino == ino:
            seen.add(ino)
            return f
        f.close()
    return None


def read_logs(path: str, tail: int | None = None, timestamps: bool = False,
              since: int | None = None, follow: bool = False, until: int | None = None,
              state_dir: str | None = None, details: bool = False,
              live_path: str | None = None) -> Iterator[tuple[str, str, str]]:
    """Yield (stream, time, line) from a json-file log and its rotated files.

    ``tail`` keeps the last N entries (None = all); ``since``/``until`` are unix
    nanoseconds (entries at or after since, before until); ``details`` prefixes each
    line with its attrs and ``timestamps`` with its time, in that order, as ``docker
    logs`` does. ``follow`` keeps reading new entries, across rotations, until the
    supervisor in ``state_dir`` (default: the log's directory) is gone; after a
    rotation it reopens ``live_path`` (default: path; attach reads a held fd's path).
    """
    state_dir = state_dir or os.path.dirname(os.path.abspath(path))
    # Open every file first: a rotation while reading then renames what we hold.
    files: list[BinaryIO] = []
    try:
        for name in log_files(path):
            try:
                files.append(open(name, "rb"))  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue  # rotated away between listing and opening
        if not files:
            return
        seen = {os.fstat(f.fileno()).st_ino for f in files}
        if live_path:  # reading a held fd: the files up to it are read or not ours
            names = [ino for _, ino in _unseen(live_path, set())]
            held = os.fstat(files[-1].fileno()).st_ino
            seen.update(names[:names.index(held) + 1] if held in names else ())
        todo = _seek_tail(files, tail) if tail is not None else files
        for f in todo[:-1]:
            items, rest = _entries(f, b"", since, until, timestamps, details)
            while items:
                yield from items
                items, rest = _entries(f, rest, since, until, timestamps, details)
        live, rest = todo[-1], b""
        while True:
            items, rest = _entries(live, rest, since, until, timestamps, details)
            if items:
                yield from items
                continue
            if not follow:
                return
            if not _same_file(live, live_path or path):  # rotated and drained: the next one
                nxt = _open_next(live_path or path, seen)
                if nxt is None:
                    return  # the log is gone (the container was removed)
                files.append(live := nxt)
                rest = b""
                continue
            if not process.supervisor_alive(state_dir):
                follow = False  # one last read catches what was written before it exited
                continue
            time.sleep(FOLLOW_INTERVAL)
    finally:
        for f in files:
            f.close()


def _entries(f: BinaryIO, rest: bytes, since: int | None, until: int | None, timestamps: bool,
             details: bool) -> tuple[list[tuple[str, str, str]], bytes]:
    """Decode the complete lines readable now (one block); return them and the leftover."""
    out: list[tuple[str, str, str]] = []
    while not out:
        chunk = f.read(1 << 16)
        if not chunk:
            break
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
            line = details_prefix(entry.attrs) + entry.log if details else entry.log
            out.append((entry.stream, entry.time,
                        f"{entry.time} {line}" if timestamps else line))
    return out, rest
