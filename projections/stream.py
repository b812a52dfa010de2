"""Read the events stream: paged XRANGE for history, blocking XREAD for what comes next.

Never pub/sub: it drops messages when nobody listens. A reader's cursor is the last stream
id it saw, so any reader resumes exactly where it stopped. An entry that cannot be decoded
is reported through `on_bad` and skipped; it never ends the iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis as redislib

from engine.errors import Internal, Unavailable
from engine.keys import Keys
from engine.snapshot import load_world
from engine.state import World
from events.codec import CODEC, DecodeError
from events.model import EventRecord
from projections.points import after_time_id

__all__ = ["BadEntry", "OnBad", "load_live", "read_records", "resolve_cursor", "tail_id", "watch"]


class BadEntry(NamedTuple):
    """An entry that could not be read: where it is (stream id or file line) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


OnBad = Callable[[BadEntry], None]
Entry = tuple[Any, dict[Any, Any]]


@contextmanager
def _redis_errors() -> Iterator[None]:
    """Translate redis-py errors into moorage's classes at this boundary."""
    try:
        yield
    except (redislib.ConnectionError, redislib.TimeoutError) as exc:
        raise Unavailable(f"cannot reach the engine's Redis: {exc}") from exc
    except redislib.RedisError as exc:
        raise Internal(f"reading the events stream failed: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(entry: Entry, on_bad: OnBad | None) -> tuple[str, EventRecord] | None:
    raw_id, fields = entry
    stream_id = _text(raw_id)
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
        with _redis_errors():
            raw = _xrange_raw(redis, keys.events, cursor, end, count)
            page: list[Any] = raw if raw is not None else redis.xrange(
                keys.events, min=cursor, max=end, count=count)
        if raw is not None:
            yield from _decode_raw_page(raw, on_bad)
        else:
            for entry in page:
                decoded = _decode(entry, on_bad)
                if decoded is not None:
                    yield decoded
        if len(page) < count:
            return
        cursor = "(" + _text(page[-1][0])


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
        decoded = _decode((raw_id, dict(zip(fields[::2], fields[1::2], strict=True))), on_bad)
        if decoded is not None:
            yield decoded


def load_live(redis: Any, keys: Keys) -> tuple[World, str]:
    """Read the live snapshot and the stream id it is current to (engine.snapshot.load_world)."""
    with _redis_errors():
        return load_world(redis, keys)


def tail_id(redis: Any, keys: Keys) -> str:
    """Return the id of the stream's last entry, or "0-0" when it is empty."""
    with _redis_errors():
        last = redis.xrevrange(keys.events, count=1)
    return _text(last[0][0]) if last else "0-0"


def resolve_cursor(redis: Any, keys: Keys, since: str | int) -> str:
    """Return an exclusive XREAD cursor for `since`.

    "$" = the tail now, "0"/"-" = the start, an id = after it, an int = unix ns (entries
    recorded at or after that time).
    """
    if isinstance(since, int):
        return after_time_id(since)
    if since == "$":
        # Pin "$" to a real id now: a later XREAD with "$" would miss what came in between.
        return tail_id(redis, keys)
    if since in ("", "-", "0"):
        return "0-0"
    return since


def _entries(reply: Any, key: str) -> list[Entry]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        found = reply.get(key.encode(), reply.get(key))
        return list(found[0]) if found and isinstance(found[0], list) else list(found or [])
    return list(reply[0][1])


def watch(redis: Any, keys: Keys, since: str | int = "$", *, block_ms: int = 1000,
          count: int = 1000, types: Collection[str] | None = None, container: str = "",
          stop: Callable[[], bool] | None = None, on_bad: OnBad | None = None
          ) -> Iterator[tuple[str, EventRecord]]:
    """Return an iterator of (stream id, record) as the reducer appends them (blocking XREAD).

    The cursor is pinned when watch() is called, so "$" means "after what exists now" even
    if iteration starts later. Resume by passing the last yielded id as `since`. `types`
    keeps only these event tags, `container` only ids starting with it. `stop()` is checked
    after each block timeout and each batch, so a watcher ends within `block_ms` of it.
    """
    cursor = resolve_cursor(redis, keys, since)
    wanted = frozenset(types) if types else None
    return _follow(redis, keys, cursor, block_ms, count, wanted, container, stop, on_bad)


def _follow(redis: Any, keys: Keys, cursor: str, block_ms: int, count: int,
            wanted: frozenset[str] | None, container: str, stop: Callable[[], bool] | None,
            on_bad: OnBad | None) -> Iterator[tuple[str, EventRecord]]:
    while stop is None or not stop():
        with _redis_errors():
            reply = redis.xread({keys.events: cursor}, count=count, block=block_ms)
        for entry in _entries(reply, keys.events):
            cursor = _text(entry[0])
            decoded = _decode(entry, on_bad)
            if decoded is None:
                continue
            record = decoded[1]
            if wanted is not None and type(record.event).__name__ not in wanted:
                continue
            if container and not record.meta.container_id.startswith(container):
                continue
            yield decoded
