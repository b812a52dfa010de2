"""Page through the events stream: raw XRANGE paging and decoding, shared by the writer's
rebuild and every reader.

An entry that cannot be decoded is reported through `on_bad` and skipped; it never ends
the iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from commands.codec import CODEC, DecodeError
from engine import resp
from engine.errors import Internal, Unavailable
from engine.keys import Keys
from events.model import EventRecord

__all__ = ["BadEntry", "Entry", "OnBad", "decode_entry", "read_records", "redis_errors", "text"]


class BadEntry(NamedTuple):
    """An entry that could not be read: where it is (stream id or file line) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


OnBad = Callable[[BadEntry], None]
Entry = tuple[Any, dict[Any, Any]]


@contextmanager
def redis_errors() -> Iterator[None]:
    """Translate Redis errors (redis-py's or engine.resp's) into moorage's classes."""
    try:
        yield
    except resp.connection_errors() as exc:
        raise Unavailable(f"cannot reach the engine's Redis: {exc}") from exc
    except resp.redis_errors() as exc:
        raise Internal(f"reading the events stream failed: {exc}") from exc


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entry(entry: Entry, on_bad: OnBad | None) -> tuple[str, EventRecord] | None:
    raw_id, fields = entry
    stream_id = text(raw_id)
    data = fields.get(b"d", fields.get("d"))
    if data is None:
        reason = "missing field 'd'"
    else:
        try:
            return stream_id, CODEC.record(data if isinstance(data, bytes) else data.encode())
        except DecodeError as exc:
            reason = f"undecodable record: {exc}"
    if on_bad is not None:
        on_bad(BadEntry(stream_id, reason))
    return None


def _xrange_raw(redis: Any, key: str, start: str, end: str, count: int) -> list[Any] | None:
    """XRANGE without redis-py's reply callback (which builds a dict per entry in Python).

    Returns hiredis' nested lists [[id, [field, value, ...]], ...], or None when the client
    has no plain connection pool to borrow from (the caller then uses redis.xrange).
    """
    pool = getattr(redis, "connection_pool", None)
    if pool is None or type(redis).__module__.startswith("fakeredis"):
        return None
    conn = pool.get_connection()
    try:
        conn.send_command("XRANGE", key, start, end, "COUNT", count)
        reply: list[Any] = conn.read_response()
        return reply
    except BaseException:
        conn.disconnect()  # a half-read reply must not be handed to the next user
        raise
    finally:
        pool.release(conn)


def read_records(redis: Any, keys: Keys, start: str = "-", end: str = "+",
                 count: int = 10_000, on_bad: OnBad | None = None
                 ) -> Iterator[tuple[str, EventRecord]]:
    """Yield (stream id, record) from start to end (inclusive; "(id" excludes), in pages."""
    cursor = start
    while True:
        with redis_errors():
            raw = _xrange_raw(redis, keys.events, cursor, end, count)
            page: list[Any] = raw if raw is not None else redis.xrange(
                keys.events, min=cursor, max=end, count=count)
        if raw is not None:
            yield from _decode_raw_page(raw, on_bad)
        else:
            for entry in page:
                decoded = decode_entry(entry, on_bad)
                if decoded is not None:
                    yield decoded
        if len(page) < count:
            return
        cursor = "(" + text(page[-1][0])


def _decode_raw_page(page: list[Any], on_bad: OnBad | None
                     ) -> Iterator[tuple[str, EventRecord]]:
    record = CODEC.record
    for raw_id, fields in page:
        # The reducer writes exactly one field, "d": take the fast path for that shape.
        if len(fields) == 2 and fields[0] == b"d":
            try:
                yield raw_id.decode(), record(fields[1])
                continue
            except DecodeError:
                pass
        decoded = decode_entry((raw_id, dict(zip(fields[::2], fields[1::2], strict=True))), on_bad)
        if decoded is not None:
            yield decoded
