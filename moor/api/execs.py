"""Exec endpoints: create, start (detached or hijacked), resize, inspect; pause and unpause.

An exec's process runs under an exec supervisor the host's worker starts
(`workers.interactive`); the supervisor serves the process's stdio on a unix socket and
starts the process once a client is attached. Exec start hijacks the HTTP connection
(`Upgrade: tcp`) and splices it to that socket: the client's bytes become stdin (its
half-close ends stdin), the supervisor's output (raw with a TTY, stdcopy frames without)
goes back as is. With a TTY the detach keys (default ctrl-p ctrl-q) end the attachment and
leave the process running, as dockerd does.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiohttp import web

from commands.options import detach_key_bytes
from engine.config import engine_id
from engine.errors import Internal, InvalidParameter, MoorError
from events import model as e
from events.specs import ExecConfig
from moor.api.context import ApiContext, ctx, run
from moor.api.http import json_body, json_response
from moor.api.streams import HalfCloseTolerant, stream_content_type
from projections.stream import tail_id
from projections.views.execs import inspect_exec
from workers.interactive import exec_socket

__all__ = ["create", "inspect", "pause", "resize", "start", "unpause"]

_READY_WAIT = 10.0  # how long the exec's supervisor may take to come up


async def pause(request: web.Request) -> web.Response:
    await run(ctx(request).client(request).pause, request.match_info["id"])
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await run(ctx(request).client(request).unpause, request.match_info["id"])
    return web.Response(status=204)


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"invalid JSON: {key} must be a list of strings")
    return tuple(value)


async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: the exec config must be an object")
    config = ExecConfig(
        cmd=_strings(body, "Cmd"), env=_strings(body, "Env"), user=body.get("User") or "",
        working_dir=body.get("WorkingDir") or "", tty=bool(body.get("Tty")),
        attach_stdin=bool(body.get("AttachStdin")), attach_stdout=bool(body.get("AttachStdout")),
        attach_stderr=bool(body.get("AttachStderr")), privileged=bool(body.get("Privileged")),
        detach_keys=body.get("DetachKeys") or "")
    client = ctx(request).client(request)
    exec_id = await run(client.create_exec, request.match_info["id"], config)
    return json_response({"Id": exec_id}, status=201)


async def inspect(request: web.Request) -> web.Response:
    context = ctx(request)
    world = await run(context.world)
    return json_response(inspect_exec(world, request.match_info["id"]))


def _socket(context: ApiContext, exec_id: str) -> str:
    return exec_socket(engine_id(context.data_root, context.keys.prefix), exec_id)


async def _await_socket(path: str) -> None:
    deadline = time.monotonic() + _READY_WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise Internal("timeout waiting for exec session ready")
        await asyncio.sleep(0.005)


async def resize(request: web.Request) -> web.Response:
    context = ctx(request)
    rows, cols = (_dimension(request, k) for k in ("h", "w"))
    world = await run(context.world)
    inspect_exec(world, request.match_info["id"])  # 404 for an unknown exec
    path = _socket(context, request.match_info["id"]) + ".ctl"
    await _await_socket(path)
    _, writer = await asyncio.open_unix_connection(path)
    writer.write(f"resize {rows} {cols}\n".encode())
    await writer.drain()
    writer.close()
    return web.Response(status=200)


def _dimension(request: web.Request, key: str) -> int:
    text = request.query.get(key, "0")
    if not text.isdigit() or int(text) >= 1 << 32:
        name = "height" if key == "h" else "width"
        raise InvalidParameter(f'invalid resize {name} "{text}": invalid syntax')
    return int(text)


class _Hijacked(HalfCloseTolerant):
    """Take the connection's bytes as the process's stdin; keep writing after its EOF."""

    def __init__(self, inner: Any, stdin: asyncio.Queue[bytes | None]) -> None:
        super().__init__(inner)
        self._stdin = stdin

    def data_received(self, data: bytes) -> None:
        self._stdin.put_nowait(data)

    def eof_received(self) -> bool:
        self._stdin.put_nowait(None)
        return True  # half-close: the output still flows back

    def connection_lost(self, exc: Exception | None) -> None:
        self._stdin.put_nowait(None)
        super().connection_lost(exc)


async def start(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = await json_body(request) if raw.strip() else {}
    context = ctx(request)
    exec_id = request.match_info["id"]
    world = await run(context.world)
    doc = inspect_exec(world, exec_id)  # 404 before anything is hijacked
    detach = bool(body.get("Detach"))
    client = context.client(request)
    cursor = await run(tail_id, context.redis, context.keys)
    await run(client.start_exec, exec_id, detach)
    if detach:
        return web.Response(status=200)
    tty = bool(doc["ProcessConfig"]["tty"])
    keys = detach_key_bytes(world.containers[doc["ContainerID"]].execs[exec_id]
                            .config.detach_keys) if tty else b""
    path = _socket(context, exec_id)
    await _await_socket(path)
    reader, writer = await asyncio.open_unix_connection(path)
    upgrade = request.headers.get("Upgrade", "").lower() == "tcp"
    headers = {"Content-Type": stream_content_type(request, tty)}
    if upgrade:
        headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
    resp = web.StreamResponse(status=101 if upgrade else 200,
                              reason="UPGRADED" if upgrade else None, headers=headers)
    resp.force_close()
    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    if request.transport is not None and request.protocol is not None:
        request.transport.set_protocol(_Hijacked(request.protocol, stdin))
    await resp.prepare(request)
    feeder = asyncio.create_task(_feed(stdin, writer, keys))
    read: asyncio.Task[bytes] | None = None
    try:
        while True:
            if read is None:
                read = asyncio.create_task(reader.read(65536))
            waiting: set[asyncio.Task[Any]] = {read} if feeder.done() else {read, feeder}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if feeder in done and not feeder.exception() and feeder.result():
                break  # detached: the process keeps running
            if read in done:
                data, read = read.result(), None
                if not data:
                    break
                await resp.write(data)
    finally:
        for task in (read, feeder):
            if task is not None:
                task.cancel()
        writer.close()
    # The client asks for the exit code as soon as the stream ends: record it first.
    await run(_await_exit, client, doc["ContainerID"], cursor, exec_id)
    await resp.write_eof()
    return resp


def _await_exit(client: Any, cid: str, cursor: str, exec_id: str) -> None:
    try:
        client.wait_event(cid, cursor, lambda ev: isinstance(ev, e.ExecDied)
                          and ev.exec_id == exec_id, timeout=10)
    except MoorError:
        pass  # a detached client, or Redis away: the stream still ends


async def _feed(stdin: asyncio.Queue[bytes | None], writer: asyncio.StreamWriter,
                keys: bytes) -> bool:
    """Copy the client's bytes to the supervisor; True when the client detached."""
    seen = b""
    while (data := await stdin.get()) is not None:
        if keys:
            seen = (seen + data)[-len(keys):]
            if seen == keys:
                cut = data[:max(0, len(data) - len(keys))]
                if cut:
                    writer.write(cut)
                    await writer.drain()
                return True
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    return False
