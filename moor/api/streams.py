"""Streaming endpoints: `wait`, `logs`, `attach` (output only) and `events`.

All of them follow the events stream (or a container's json-file log) from a cursor taken
before the response headers are sent, so nothing that happens after the client's request
is missed: `docker run` relies on it, sending `wait` before `start`.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from commands.codec import CODEC
from engine.core.state import Container, World
from engine.errors import InvalidParameter, MoorError
from engine.eventlog import read_records
from events import model as e
from moor.api.context import ApiContext, ctx, run
from moor.api.http import JSON, api_version, dumps, query_bool, thread_stream
from projections.stream import load_live, watch
from projections.views.feed import FeedState, docker_event, event_filter, observe
from projections.views.filters import parse_filters_json
from projections.views.inspect import find_container
from projections.views.points import parse_time
from workers.proc.logs import NO_READING, fixed_time, read_logs
from workers.storage.rootfs import container_dir

__all__ = ["HalfCloseTolerant", "attach", "events", "logs", "stream_content_type", "wait"]

_CONDITIONS = ("not-running", "next-exit", "removed")
_STREAMS = {"stdin": 0, "stdout": 1, "stderr": 2}
_MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
_RAW = "application/vnd.docker.raw-stream"
_BLOCK_MS = 500


def _snapshot(context: ApiContext, ref: str) -> tuple[World, str, Container]:
    world, checkpoint = load_live(context.redis, context.keys)
    return world, checkpoint, find_container(world, ref)


# --- wait -------------------------------------------------------------------------------

def _wait_exit(context: ApiContext, ctr: Container, cursor: str, condition: str,
               stop: threading.Event) -> Iterator[dict[str, Any]]:
    """Yield one wait result when the condition holds (nothing if stopped first)."""
    code, error = ctr.exit_code, ctr.error
    for _, record in watch(context.redis, context.keys, cursor, block_ms=_BLOCK_MS,
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

def _frame(stream: str, data: bytes) -> bytes:
    return struct.pack(">BxxxL", _STREAMS.get(stream, 1), len(data)) + data


def _time_arg(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    if value in ("", "0"):
        return None
    return parse_time(value, time.time_ns())


class LogsNotSupported(MoorError):
    """The container's log driver keeps nothing to read (none): Docker's 501."""

    status = 501


def _log_lines(root: str, ctr: Container, *, tail: int | None, since: int | None,
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


def stream_content_type(request: web.Request, tty: bool) -> str:
    """Raw with a TTY or before API 1.42; stdcopy-multiplexed otherwise."""
    if tty:
        return _RAW
    return _MULTIPLEXED if api_version(request) >= (1, 42) else _RAW


def _encode(ctr: Container, stream: str, data: bytes) -> bytes:
    return data if ctr.config.tty else _frame(stream, data)


async def _pump(resp: web.StreamResponse, ctr: Container, items: Any) -> None:
    """Write (stream, bytes) items, coalescing what is already queued into one write."""
    async for stream, data in items:
        await resp.write(_encode(ctr, stream, data))


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
    await _pump(resp, ctr, thread_stream(
        lambda stop: _log_lines(context.data_root, ctr, tail=tail, since=since, until=until,
                                follow=follow, timestamps=timestamps, details=details,
                                wanted=wanted, stop=stop)))
    await resp.write_eof()
    return resp


def _open_log(root: str, cid: str) -> int | None:
    try:
        return os.open(os.path.join(container_dir(root, cid), f"{cid}-json.log"),
                       os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _await_run(context: ApiContext, ctr: Container, cursor: str, stop: threading.Event
               ) -> tuple[int | None, bool]:
    """Open the run's log as soon as it exists and wait until the process started.

    Returns (log fd or None, whether the process runs or ran). The log is held open from
    the moment the supervisor creates it: with AutoRemove the container's directory may
    be deleted soon after a short process exits, before the output could be read.
    """
    fd = _open_log(context.data_root, ctr.id)
    if ctr.running:
        return fd, True
    started = False
    while not stop.is_set():
        if fd is None:
            fd = _open_log(context.data_root, ctr.id)
        reply = context.redis.xread({context.keys.events: cursor}, count=500,
                                    block=None if fd is None else _BLOCK_MS)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id.decode()
                record = CODEC.record(fields[b"d"])
                if record.meta.container_id != ctr.id:
                    continue
                if isinstance(record.event, e.ContainerStarted):
                    started = True
                elif isinstance(record.event, e.StartFailed | e.ContainerDestroyed):
                    return fd, started
        if started and fd is not None:
            return fd, True
        if fd is None:
            time.sleep(0.002)  # the file appears when the supervisor spawns the process
    return fd, started


def _attached_output(context: ApiContext, ctr: Container, cursor: str, since: int,
                     wanted: set[str], stop: threading.Event) -> Iterator[tuple[str, bytes]]:
    """Wait for the container to run (docker run attaches before start), then follow."""
    fd, started = _await_run(context, ctr, cursor, stop)
    if fd is None:
        return
    try:
        cdir = container_dir(context.data_root, ctr.id)
        for stream, _, line in read_logs(f"/proc/self/fd/{fd}", since=since, follow=started,
                                         state_dir=os.path.join(cdir, "state"),
                                         live_path=os.path.join(cdir, f"{ctr.id}-json.log")):
            if stop.is_set():
                return
            if stream in wanted:
                yield stream, line.encode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


class HalfCloseTolerant(asyncio.Protocol):
    """Delegate to aiohttp's protocol, but keep the transport open on the peer's EOF."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def eof_received(self) -> bool:
        return True

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


async def attach(request: web.Request) -> web.StreamResponse:
    """Stream the container's output over the upgraded connection (no stdin, no TTY)."""
    if query_bool(request, "stdin"):
        raise InvalidParameter("moorage does not support attaching to a container's stdin")
    context = ctx(request)
    since = time.time_ns()
    _, cursor, ctr = await run(_snapshot, context, request.match_info["id"])
    wanted = {s for s in ("stdout", "stderr") if query_bool(request, s)}
    upgrade = request.headers.get("Upgrade", "").lower() == "tcp"
    headers = {"Content-Type": stream_content_type(request, ctr.config.tty)}
    if upgrade:
        headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
    resp = web.StreamResponse(status=101 if upgrade else 200, reason="UPGRADED"
                              if upgrade else None, headers=headers)
    resp.force_close()
    # The docker CLI half-closes an attach connection at once when it sends no stdin;
    # asyncio would then close the whole transport (aiohttp's eof_received says so).
    # Keep the write side open for this connection: it is closed when the output ends.
    if request.transport is not None and request.protocol is not None:
        request.transport.set_protocol(HalfCloseTolerant(request.protocol))
    await resp.prepare(request)
    if query_bool(request, "stream") and wanted:
        await _pump(resp, ctr, thread_stream(
            lambda stop: _attached_output(context, ctr, cursor, since, wanted, stop)))
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

    if since is None and until is None:
        world, cursor = load_live(context.redis, context.keys)
        state = FeedState.from_world(world)
    else:
        # Old events carry the names they had then: fold the whole journal.
        state, cursor = FeedState(), "0-0"
        for stream_id, record in read_records(context.redis, context.keys):
            cursor = stream_id
            observe(state, record)
            ev = docker_event(record, stream_id, state)
            if shown(ev):
                yield ev  # type: ignore[misc]
            if stop.is_set():
                return
        if until is not None and until <= time.time_ns():
            return

    def past() -> bool:
        return stop.is_set() or (until is not None and time.time_ns() > until)

    for stream_id, record in watch(context.redis, context.keys, cursor,
                                   block_ms=200 if until is not None else 1000, stop=past):
        observe(state, record)
        ev = docker_event(record, stream_id, state)
        if shown(ev):
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
