"""`/containers/{id}/archive`: HEAD (stat), GET (a tar of a path), PUT (extract a tar).

Each request runs a copy helper (workers.storage.ctrcopy) in a private mount namespace,
chrooted into the container's rootfs (mounted there on demand when it is stopped); this
handler only pipes bytes between the helper and the client.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from engine.errors import InvalidParameter
from moor.api.context import ctx, run
from moor.api.http import query_bool
from projections.views.inspect import find_container
from workers.storage.ctrcopy import container_helper, helper_error, stat_header

__all__ = ["get", "head", "put"]

_CHUNK = 1 << 16
_STAT = "X-Docker-Container-Path-Stat"


async def _helper(request: web.Request, op: str) -> asyncio.subprocess.Process:
    """Start the helper for op on the request's container and path."""
    path = request.query.get("path", "")
    if not path:
        raise InvalidParameter("bad parameter: pathcannot be empty")  # sic, as dockerd
    context = ctx(request)
    world = await run(context.world)
    ref = request.match_info["id"]
    argv = container_helper(context.data_root, find_container(world, ref), world.images, op,
                            path, query_bool(request, "noOverwriteDirNonDir"), ref)
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if op == "put" else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _stat_line(proc: asyncio.subprocess.Process) -> str:
    """Read the helper's stat line, or raise the error it reported."""
    assert proc.stdout is not None and proc.stderr is not None
    line = await proc.stdout.readline()
    if not line:
        err = await proc.stderr.read()
        await proc.wait()
        raise helper_error(err)
    return stat_header(json.loads(line))


async def head(request: web.Request) -> web.Response:
    proc = await _helper(request, "stat")
    header = await _stat_line(proc)
    await proc.wait()
    return web.Response(status=200, headers={_STAT: header})


async def _note(request: web.Request, action: str) -> None:
    """Record Docker's event for a copy that succeeded (HEAD emits none, as dockerd)."""
    context = ctx(request)
    await run(context.client(request).note_action, request.match_info["id"], action)


async def get(request: web.Request) -> web.StreamResponse:
    proc = await _helper(request, "get")
    assert proc.stdout is not None
    try:
        header = await _stat_line(proc)
        await _note(request, "archive-path")
        response = web.StreamResponse(
            status=200, headers={_STAT: header, "Content-Type": "application/x-tar"})
        await response.prepare(request)
        while chunk := await proc.stdout.read(_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def put(request: web.Request) -> web.Response:
    proc = await _helper(request, "put")
    assert proc.stdin is not None and proc.stderr is not None
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            proc.stdin.write(chunk)
            await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the helper stopped reading: its error says why
    err = await proc.stderr.read()
    if await proc.wait() != 0:
        raise helper_error(err)
    await _note(request, "extract-to-dir")
    return web.Response(status=200)
