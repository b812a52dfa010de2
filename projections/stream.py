"""Follow the events stream: the live snapshot, its tail, and a blocking XREAD watch.

Never pub/sub: it drops messages when nobody listens. A reader's cursor is the last stream
id it saw, so any reader resumes exactly where it stopped. Paging through history is
engine.eventlog's (the writer's rebuild pages the same way).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from engine.core.state import World
from engine.eventlog import Entry, OnBad, decode_entry, redis_errors, text
from engine.keys import Keys
from engine.snapshot import load_world
from events.model import EventRecord
from projections.views.points import after_time_id

__all__ = ["load_live", "load_live_all", "merged", "resolve_cursor", "tail_id", "watch"]


def load_live(redis: Any, keys: Keys) -> tuple[World, str]:
    """Read the live snapshot and the stream id it is current to (engine.snapshot.load_world)."""
    with redis_errors():
        return load_world(redis, keys)


def load_live_all(stores: dict[str, tuple[Any, Keys]]) -> World:
    """Read every shard's snapshot and merge them into one World for the read side.

    Containers, names and exec ids are the union (a container lives in one shard); the
    catalog (images, networks, volumes), which every shard decides alike, is shard 0's.
    Addresses stay per shard: each shard allocates in its own subnet slice."""
    merged: World | None = None
    for shard in sorted(stores, key=int):
        redis, keys = stores[shard]
        world = load_live(redis, keys)[0]
        if merged is None:
            merged = world
            continue
        merged.containers.update(world.containers)
        merged.names.update(world.names)
        merged.execs.update(world.execs)
        merged.addresses.update(world.addresses)
        merged.destroyed |= world.destroyed
    return merged if merged is not None else World()


def merged(sources: Iterable[Iterator[Any]]) -> Iterator[Any]:
    """Yield the items of several iterators as they come (a thread each) until all end:
    the shards' watches, each in its own shard's order (a container's changes are all in
    its shard, so each container's order is kept). A source's failure is raised here."""
    items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=1000)
    _ITEM, _END, _FAIL = 0, 1, 2

    def pump(source: Iterator[Any]) -> None:
        try:
            for item in source:
                items.put((_ITEM, item))
        except BaseException as exc:  # the reader sees a shard's failure
            items.put((_FAIL, exc))
            return
        items.put((_END, None))

    running = 0
    for source in sources:
        threading.Thread(target=pump, args=(source,), daemon=True).start()
        running += 1
    while running:
        kind, item = items.get()
        if kind == _FAIL:
            raise item
        if kind == _END:
            running -= 1
            continue
        yield item


def tail_id(redis: Any, keys: Keys) -> str:
    """Return the id of the stream's last entry, or "0-0" when it is empty."""
    with redis_errors():
        last = redis.xrevrange(keys.events, count=1)
    return text(last[0][0]) if last else "0-0"


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
        with redis_errors():
            reply = redis.xread({keys.events: cursor}, count=count, block=block_ms)
        for entry in _entries(reply, keys.events):
            cursor = text(entry[0])
            decoded = decode_entry(entry, on_bad)
            if decoded is None:
                continue
            record = decoded[1]
            if wanted is not None and type(record.event).__name__ not in wanted:
                continue
            if container and not record.meta.container_id.startswith(container):
                continue
            yield decoded
