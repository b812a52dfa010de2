"""Container attach: `POST /containers/{id}/attach` (hijacked), `GET …/attach/ws`, resize.

A container with a TTY or an open stdin is attached through its supervisor's unix socket
(`workers.proc.hub`): stdin goes in, the output comes back as the supervisor serves it
(raw with a TTY, stdcopy frames without), and with a TTY the detach keys end the
attachment and leave the container running. A client that attached before the start
(`docker run -i`, `docker start -a -i`) waits for the start, then asks the supervisor for
the output written since. Any other container's output is followed in its json-file log,
which needs no live supervisor.

Errors found once the connection is taken (Docker checks them after hijacking) are
answered as dockerd writes them: a bare status line and the message as text.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import WSMsgType, web

from commands.codec import CODEC
from commands.options import detach_key_bytes
from engine.core.state import Container
from engine.errors import Conflict, InvalidParameter, MoorError
from events import model as e
from moor.api.context import ApiContext, ctx, run
from moor.api.hijack import RAW, dimension, hijack, splice
from moor.api.http import query_bool, thread_stream
from moor.api.streams import log_lines, pump
from projections.stream import watch
from projections.views.inspect import find_container
from workers.interactive import attach_socket
from workers.proc.console import send_resize
from workers.proc.hub import Want, hello
from workers.proc.logs import read_logs
from workers.storage.rootfs import container_dir

__all__ = ["attach", "attach_ws", "resize"]

_BLOCK_MS = 500
Write = Callable[[bytes], Awaitable[Any]]


def _attachable(context: ApiContext, ref: str, keys_text: str
                ) -> tuple[str, Container, bytes]:
    """Return (events cursor, container, detach keys), or Docker's refusal, in its order."""
    try:
        keys = detach_key_bytes(keys_text)
    except ValueError:
        raise InvalidParameter(f"Invalid detach keys ({keys_text}) provided") from None
    ctr, cursor = context.live(ref)
    if ctr.paused:
        raise Conflict(f"container {ref} is paused, unpause the container before attach")
    if ctr.restarting:
        raise Conflict(f"container {ref} is restarting, wait until the container is running")
    return cursor, ctr, keys


def _raw_error(err: MoorError) -> web.Response:
    """Docker's after-hijack error: status line, raw content type, the text and CRLF."""
    resp = web.Response(status=err.status, body=f"{err.message}\r\n".encode(),
                        headers={"Content-Type": RAW})
    resp.force_close()
    return resp


class _Session:
    """One attach request: what it asked for and where it goes."""

    def __init__(self, request: web.Request, context: ApiContext, cursor: str,
                 ctr: Container, keys: bytes, raw: bool = False) -> None:
        self.context, self.cursor, self.ctr = context, cursor, ctr
        self.client = context.client(request)
        self.since = time.time_ns()
        self.wanted = {s for s in ("stdout", "stderr") if query_bool(request, s)}
        self.stdin = query_bool(request, "stdin") and ctr.config.open_stdin
        self.keys = keys if ctr.config.tty else b""  # detected only with a TTY, as dockerd
        self.raw = raw or ctr.config.tty
        self.path = attach_socket(context.engine(ctr.id), ctr.id,
                                  ctr.config)

    async def replay_logs(self, write: Write) -> None:
        """`logs=1`: the whole log first."""
        context, ctr, wanted = self.context, self.ctr, self.wanted
        await pump(write, self.raw, thread_stream(
            lambda stop: log_lines(context.data_root, ctr, tail=None, since=None, until=None,
                                   follow=False, timestamps=False, details=False,
                                   wanted=wanted, stop=stop)))

    async def stream(self, write: Write, stdin: asyncio.Queue[bytes | None]) -> None:
        """Follow the output (and feed stdin) until it ends or the client detaches."""
        if self.path and await self._through_supervisor(write, stdin):
            return
        if self.wanted:
            context, ctr, cursor, since, wanted = (self.context, self.ctr, self.cursor,
                                                   self.since, self.wanted)
            await pump(write, self.raw, thread_stream(
                lambda stop: _attached_output(context, ctr, cursor, since, wanted, stop)))

    async def _through_supervisor(self, write: Write, stdin: asyncio.Queue[bytes | None]
                                  ) -> bool:
        """Attach on the supervisor's socket; False if it has none (then follow the log)."""
        waited = not self.ctr.running
        if waited:
            context, cid, cursor = self.context, self.ctr.id, self.cursor
            async for started in thread_stream(lambda stop: _start_of(context, cid, cursor,
                                                                      stop)):
                if not started:
                    return True  # it failed to start or was removed: nothing to attach
                break
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError:
            return False  # a run started before attach was served, or just ended
        writer.write(hello(Want(stdin=self.stdin, stdout="stdout" in self.wanted,
                                stderr="stderr" in self.wanted, replay=waited,
                                raw=self.raw)))
        if await splice(write, stdin, reader, writer, self.keys):
            await self.note("detach")  # the detach keys: Docker's container `detach`
        return True

    async def note(self, action: str) -> None:
        """Record Docker's `attach` or `detach` event (a container gone meanwhile: none)."""
        try:
            await run(self.client.note_action, self.ctr.id, action)
        except MoorError:
            pass


async def attach(request: web.Request) -> web.StreamResponse:
    """`POST /containers/{id}/attach`: hijack, then the log replay and/or the stream."""
    context = ctx(request)
    try:
        cursor, ctr, keys = await run(_attachable, context, request.match_info["id"],
                                      request.query.get("detachKeys", ""))
    except MoorError as err:
        return _raw_error(err)
    session = _Session(request, context, cursor, ctr, keys)
    resp, stdin = await hijack(request, ctr.config.tty)
    if query_bool(request, "logs"):
        await session.replay_logs(resp.write)
    if query_bool(request, "stream"):
        await session.note("attach")  # when streaming begins, after any logs, as dockerd
        await session.stream(resp.write, stdin)
    await resp.write_eof()
    return resp


async def attach_ws(request: web.Request) -> web.StreamResponse:
    """`GET /containers/{id}/attach/ws`: the same over a websocket (binary, never framed)."""
    context = ctx(request)
    cursor, ctr, keys = await run(_attachable, context, request.match_info["id"],
                                  request.query.get("detachKeys", ""))
    session = _Session(request, context, cursor, ctr, keys, raw=True)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    reading = asyncio.create_task(_ws_input(ws, stdin))
    try:
        if query_bool(request, "logs"):
            await session.replay_logs(ws.send_bytes)
        if query_bool(request, "stream"):
            await session.note("attach")
            await session.stream(ws.send_bytes, stdin)
    finally:
        reading.cancel()
        await ws.close()
    return ws


async def _ws_input(ws: web.WebSocketResponse, stdin: asyncio.Queue[bytes | None]) -> None:
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                stdin.put_nowait(msg.data)
            elif msg.type == WSMsgType.TEXT:
                stdin.put_nowait(msg.data.encode())
    finally:
        stdin.put_nowait(None)


async def resize(request: web.Request) -> web.Response:
    """`POST /containers/{id}/resize?h=&w=`: the pty of a running container."""
    rows, cols = (dimension(request, k) for k in ("h", "w"))
    context = ctx(request)
    world = await run(context.world)
    ctr = find_container(world, request.match_info["id"])
    if not ctr.running:
        raise Conflict(f"container {ctr.id} is not running")
    path = attach_socket(context.engine(ctr.id), ctr.id,
                         ctr.config)
    if path and ctr.config.tty:
        try:
            await run(send_resize, path, rows, cols)
        except OSError:
            pass  # a run from before attach was served has no pty to resize
    await run(context.client(request).note_action, ctr.id, "resize",
              height=str(rows), width=str(cols))
    return web.Response(status=200)


# --- waiting for the start, following the log --------------------------------------------

def _start_of(context: ApiContext, cid: str, cursor: str, stop: threading.Event
              ) -> Iterator[bool]:
    """Yield True once the container has started after cursor; False if it never will."""
    for _, record in watch(*context.store(cid), cursor, block_ms=_BLOCK_MS,
                           container=cid, stop=stop.is_set):
        if isinstance(record.event, e.ContainerStarted):
            yield True
            return
        if isinstance(record.event, e.StartFailed | e.ContainerDestroyed):
            yield False
            return


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
        redis, keys = context.store(ctr.id)
        reply = redis.xread({keys.events: cursor}, count=500,
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
