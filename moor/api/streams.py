"""Streaming endpoints: `wait`, `logs` and `events` (`attach` is in moor.api.attach).

All of them follow the events stream (or a container's json-file log) from a cursor taken
before the response headers are sent, so nothing that happens after the client's request
is missed: `docker run` relies on it, sending `wait` before `start`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from engine.core.state import Container, World
from engine.errors import InvalidParameter, MoorError
from engine.eventlog import read_records
from events import model as e
from moor.api.context import ApiContext, ctx, run
from moor.api.hijack import stream_content_type
from moor.api.http import JSON, dumps, query_bool, thread_stream
from projections.stream import load_live, merged, watch
from projections.views.feed import FeedState, docker_event, event_filter, observe
from projections.views.filters import parse_filters_json
from projections.views.inspect import find_container
from projections.views.points import parse_time
from workers.proc.console import frame
from workers.proc.logs import NO_READING, fixed_time, read_logs
from workers.storage.rootfs import container_dir

__all__ = ["encode", "events", "log_lines", "logs", "pump", "wait"]

_CONDITIONS = ("not-running", "next-exit", "removed")
_STREAMS = {"stdin": 0, "stdout": 1, "stderr": 2}
_BLOCK_MS = 500


def _snapshot(context: ApiContext, ref: str) -> tuple[World, str, Container]:
    """The live state, the cursor of the container's shard, and the container."""
    if context.shards is None:
        world, checkpoint = load_live(context.redis, context.keys)
        return world, checkpoint, find_container(world, ref)
    ctr, checkpoint = context.live(ref)
    return context.world(), checkpoint, ctr


# --- wait -------------------------------------------------------------------------------

def _wait_exit(context: ApiContext, ctr: Container, cursor: str, condition: str,
               stop: threading.Event) -> Iterator[dict[str, Any]]:
    """Yield one wait result when the condition holds (nothing if stopped first)."""
    code, error = ctr.exit_code, ctr.error
    for _, record in watch(*context.store(ctr.id), cursor, block_ms=_BLOCK_MS,
                           container=ctr.id, stop=stop.is_set):
        ev = record.event
        if isinstance(ev, e.ContainerDied | e.StartFailed):
            code, error = ev.exit_code, ev.error
            if condition != "removed":
                break
        elif isinstance(ev, e.ContainerDestroyed):
            break
    else:
        return
    yield _wait_body(code, error)


def _wait_body(code: int, error: str) -> dict[str, Any]:
    body: dict[str, Any] = {"StatusCode": code}
    if error:
        body["Error"] = {"Message": error}
    return body


async def wait(request: web.Request) -> web.StreamResponse:
    condition = request.query.get("condition") or "not-running"
    if condition not in _CONDITIONS:
        raise InvalidParameter(f'invalid condition: "{condition}"')
    context = ctx(request)
    _, cursor, ctr = await run(_snapshot, context, request.match_info["id"])
    resp = web.StreamResponse(headers={"Content-Type": JSON})
    await resp.prepare(request)  # headers now: the client may start the container
    if condition == "not-running" and not (ctr.running or ctr.starting):
        await resp.write(dumps(_wait_body(ctr.exit_code, ctr.error)))
    else:
        async for body in thread_stream(lambda stop: _wait_exit(context, ctr, cursor,
                                                                condition, stop)):
            await resp.write(dumps(body))
    await resp.write_eof()
    return resp


# --- logs and attach -----------------------------------------------------------------------

def _time_arg(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    if value in ("", "0"):
        return None
    return parse_time(value, time.time_ns())


class LogsNotSupported(MoorError):
    """The container's log driver keeps nothing to read (none): Docker's 501."""

    status = 501


def log_lines(root: str, ctr: Container, *, tail: int | None, since: int | None,
               until: int | None, follow: bool, timestamps: bool, details: bool,
               wanted: set[str], stop: threading.Event) -> Iterator[tuple[str, bytes]]:
    cdir = container_dir(root, ctr.id)
    path = os.path.join(cdir, f"{ctr.id}-json.log")
    if not os.path.exists(path):
        return
    for stream, stamp, line in read_logs(path, tail=tail, since=since, until=until,
                                         follow=follow, state_dir=os.path.join(cdir, "state"),
                                         details=details):
        if stop.is_set():
            return
        if stream not in wanted:
            continue
        text = f"{fixed_time(stamp)} {line}" if timestamps else line
        yield stream, text.encode("utf-8", "surrogateescape")


def _tail_arg(request: web.Request) -> int | None:
    value = request.query.get("tail", "all")
    if value in ("", "all"):
        return None
    try:
        return int(value)
    except ValueError:
        return None  # dockerd treats a bad tail as "all"


def encode(raw: bool, stream: str, data: bytes) -> bytes:
    """Docker's stream bytes: as written with a TTY (``raw``), else a stdcopy frame."""
    return data if raw else frame(_STREAMS.get(stream, 1), data)


async def pump(write: Callable[[bytes], Awaitable[Any]], raw: bool, items: Any) -> None:
    """Write (stream, bytes) items from a thread_stream (to a response or a websocket)."""
    async for stream, data in items:
        await write(encode(raw, stream, data))


async def logs(request: web.Request) -> web.StreamResponse:
    wanted = {s for s in ("stdout", "stderr") if query_bool(request, s)}
    if not wanted:
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    context = ctx(request)
    world = await run(context.world)
    ctr = find_container(world, request.match_info["id"])
    if ctr.host_config.log_config.type == "none":
        raise LogsNotSupported(NO_READING)
    tail, since, until = _tail_arg(request), _time_arg(request, "since"), \
        _time_arg(request, "until")
    follow = query_bool(request, "follow") and (ctr.running or ctr.starting)
    timestamps, details = query_bool(request, "timestamps"), query_bool(request, "details")
    resp = web.StreamResponse(
        headers={"Content-Type": stream_content_type(request, ctr.config.tty)})
    await resp.prepare(request)
    await pump(resp.write, ctr.config.tty, thread_stream(
        lambda stop: log_lines(context.data_root, ctr, tail=tail, since=since, until=until,
                                follow=follow, timestamps=timestamps, details=details,
                                wanted=wanted, stop=stop)))
    await resp.write_eof()
    return resp


# --- events -------------------------------------------------------------------------------

def _event_range(request: web.Request) -> tuple[int | None, int | None]:
    now = time.time_ns()
    since_text, until_text = request.query.get("since", ""), request.query.get("until", "")
    since = parse_time(since_text, now) if since_text else None
    until = parse_time(until_text, now) if until_text else None
    if since is not None and until is not None and until < since:
        raise InvalidParameter(f"`since` time ({since_text}) cannot be after `until` time "
                               f"({until_text})")
    return since, until


def _docker_events(context: ApiContext, since: int | None, until: int | None,
                   filters: dict[str, list[str]], stop: threading.Event
                   ) -> Iterator[dict[str, Any]]:
    include = event_filter(filters)

    def shown(ev: dict[str, Any] | None) -> bool:
        if ev is None or not include(ev):
            return False
        t = ev["timeNano"]
        return (since is None or t >= since) and (until is None or t <= until)

    def past() -> bool:
        return stop.is_set() or (until is not None and time.time_ns() > until)

    shards = context.shards or {"0": (context.redis, context.keys)}
    # Every shard decides the catalog (images, networks, volumes) for itself: its events
    # are shown once, from shard 0; a container's are all in its own shard.
    feeds = [_ShardFeed(redis, keys, catalog=shard == "0", shown=shown)
             for shard, (redis, keys) in sorted(shards.items(), key=lambda i: int(i[0]))]
    history: list[dict[str, Any]] = []
    for feed in feeds:
        for ev in feed.history(since is None and until is None, stop):
            history.append(ev)
    if len(feeds) > 1:
        history.sort(key=lambda ev: ev["timeNano"])
    yield from history
    if stop.is_set() or (until is not None and until <= time.time_ns()):
        return
    block = 200 if until is not None else 1000
    if len(feeds) == 1:
        yield from feeds[0].live(block, past)
    else:
        yield from merged(feed.live(block, past) for feed in feeds)


class _ShardFeed:
    """One shard's Docker events: what its journal holds, then its tail."""

    def __init__(self, redis: Any, keys: Any, *, catalog: bool,
                 shown: Callable[[dict[str, Any] | None], bool]) -> None:
        self.redis, self.keys, self.catalog, self.shown = redis, keys, catalog, shown
        self.state, self.cursor = FeedState(), "0-0"

    def _ours(self, record: Any) -> bool:
        return self.catalog or bool(record.meta.container_id)

    def history(self, from_now: bool, stop: threading.Event) -> Iterator[dict[str, Any]]:
        if from_now:
            world, self.cursor = load_live(self.redis, self.keys)
            self.state = FeedState.from_world(world)
            return
        # Old events carry the names they had then: fold the whole journal.
        for stream_id, record in read_records(self.redis, self.keys):
            self.cursor = stream_id
            observe(self.state, record)
            ev = docker_event(record, stream_id, self.state)
            if self._ours(record) and self.shown(ev):
                yield ev  # type: ignore[misc]
            if stop.is_set():
                return

    def live(self, block_ms: int, past: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        for stream_id, record in watch(self.redis, self.keys, self.cursor, block_ms=block_ms,
                                       stop=past):
            observe(self.state, record)
            ev = docker_event(record, stream_id, self.state)
            if self._ours(record) and self.shown(ev):
                yield ev  # type: ignore[misc]


async def events(request: web.Request) -> web.StreamResponse:
    since, until = _event_range(request)
    filters = parse_filters_json(request.query.get("filters"))
    event_filter(filters)  # invalid keys: a 400 before the stream starts
    context = ctx(request)
    resp = web.StreamResponse(headers={"Content-Type": JSON})
    await resp.prepare(request)
    async for ev in thread_stream(lambda stop: _docker_events(context, since, until, filters,
                                                              stop)):
        await resp.write(dumps(ev))
    await resp.write_eof()
    return resp
