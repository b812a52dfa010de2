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
from typing import Any

from aiohttp import web

from commands.options import detach_key_bytes
from engine.errors import InvalidParameter, MoorError
from events import model as e
from events.specs import ExecConfig
from moor.api.context import ApiContext, ctx, run
from moor.api.hijack import await_socket, dimension, hijack, splice
from moor.api.http import json_body, json_response
from projections.stream import tail_id
from projections.views.execs import inspect_exec
from workers.interactive import exec_socket
from workers.proc.console import CTL_SUFFIX, send_resize

__all__ = ["create", "inspect", "pause", "resize", "start", "unpause"]

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
    return exec_socket(context.engine(exec_id), exec_id)


async def resize(request: web.Request) -> web.Response:
    context = ctx(request)
    rows, cols = (dimension(request, k) for k in ("h", "w"))
    world = await run(context.world)
    inspect_exec(world, request.match_info["id"])  # 404 for an unknown exec
    path = _socket(context, request.match_info["id"])
    await await_socket(path + CTL_SUFFIX)
    await run(send_resize, path, rows, cols)
    return web.Response(status=200)


async def start(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = await json_body(request) if raw.strip() else {}
    context = ctx(request)
    exec_id = request.match_info["id"]
    world = await run(context.world)
    doc = inspect_exec(world, exec_id)  # 404 before anything is hijacked
    detach = bool(body.get("Detach"))
    client = context.client(request)
    cursor = await run(tail_id, *context.store(exec_id))
    await run(client.start_exec, exec_id, detach)
    if detach:
        return web.Response(status=200)
    tty = bool(doc["ProcessConfig"]["tty"])
    keys = detach_key_bytes(world.containers[doc["ContainerID"]].execs[exec_id]
                            .config.detach_keys) if tty else b""
    path = _socket(context, exec_id)
    await await_socket(path)
    reader, writer = await asyncio.open_unix_connection(path)
    resp, stdin = await hijack(request, tty)
    await splice(resp.write, stdin, reader, writer, keys)
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
