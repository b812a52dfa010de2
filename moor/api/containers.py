"""Container endpoints: list, create, inspect, start, stop, restart, kill, remove, rename.

Each request goes through the control-plane client: submit, wait for the outcome the
docker CLI expects (start: running; stop and SIGKILL: died; rm: destroyed), and let the
MoorError it raises carry Docker's status and text to the edge.
"""

from __future__ import annotations

import os
import time

from aiohttp import web

from commands import schema as c
from commands.client import Client
from engine.errors import Internal, InvalidParameter, MoorError, Timeout
from events import model as e
from events.signals import parse_signal
from moor.api.context import ctx, run
from moor.api.create import container_spec, create_warnings
from moor.api.http import json_body, json_response, query_bool, query_int
from moor.api.mounts import check_bind_sources
from moor.api.netcreate import networking_spec
from projections.views.filters import parse_filters_json
from projections.views.inspect import find_container, inspect_container
from projections.views.ps import list_containers
from projections.views.volumes import mounts_doc
from workers.storage.rootfs import container_dir

__all__ = ["create", "inspect", "kill", "list_", "remove", "rename", "restart", "start", "stop"]

_SIGKILL = 9
_KILL_WAIT = 12.0  # dockerd: 10 s for the exit event, then 2 s more
_NO_CONTENT = 204


def _no_content() -> web.Response:
    return web.Response(status=_NO_CONTENT)


async def list_(request: web.Request) -> web.Response:
    context = ctx(request)
    filters = parse_filters_json(request.query.get("filters"))
    limit = query_int(request, "limit")
    everything = query_bool(request, "all")
    world = await run(context.world)
    items = list_containers(world, everything, filters, limit if limit and limit > 0 else None,
                            now_ns=time.time_ns())
    return json_response(items)


async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    config, host = container_spec(body)
    check_bind_sources(host)  # the host's file system: the one check the engine cannot make
    platform = request.query.get("platform", "")
    if platform and not platform.startswith("linux"):
        raise InvalidParameter(f'"{platform}": unknown operating system or architecture: '
                               "invalid argument")
    name = request.query.get("name", "")
    client = ctx(request).client(request)
    networking = networking_spec(body, host.network_mode)
    cid = await run(lambda: client.create(config, host, name=name, networking=networking))
    return json_response({"Id": cid, "Warnings": create_warnings(host)}, status=201)


async def inspect(request: web.Request) -> web.Response:
    context = ctx(request)
    ref = request.match_info["id"]
    world = await run(context.world)
    doc = inspect_container(world, find_container(world, ref), time.time_ns())
    # Host facts the pure projection cannot know; docker-py reads LogConfig after a run.
    doc["HostConfig"].setdefault("LogConfig", {"Type": "json-file", "Config": {}})
    ctr = world.containers[doc["Id"]]
    doc["Mounts"] = mounts_doc(ctr.mounts, context.data_root)
    if not doc.get("LogPath") and doc["HostConfig"]["LogConfig"]["Type"] == "json-file":
        doc["LogPath"] = os.path.join(container_dir(context.data_root, doc["Id"]),
                                      f"{doc['Id']}-json.log")
    return json_response(doc)


async def start(request: web.Request) -> web.Response:
    raw = await request.read()
    if raw.strip() not in (b"", b"null", b"{}"):
        raise InvalidParameter("starting container with non-empty request body was "
                               "deprecated since API v1.22 and removed in v1.24")
    if request.query.get("checkpoint"):
        raise InvalidParameter("checkpoints are not supported by moorage")
    client = ctx(request).client(request)
    await run(client.start, request.match_info["id"])  # 304 when already running
    return _no_content()


def _stop(client: Client, ref: str, timeout: int | None, signal: str) -> None:
    # Not Client.stop: it hides Docker's 304 for an already stopped container.
    sub = client.submit(c.StopContainer(ref=ref, timeout=timeout, signal=signal))
    grace = (timeout if timeout is not None and timeout >= 0 else 10) + client.timeout
    if timeout is not None and timeout < 0:
        grace = 24 * 3600.0  # a negative timeout waits for the exit forever
    client.wait_exit(sub, grace)


async def stop(request: web.Request) -> web.Response:
    client = ctx(request).client(request)
    await run(_stop, client, request.match_info["id"], query_int(request, "t"),
              request.query.get("signal", ""))
    return _no_content()


def _restart(client: Client, ref: str, timeout: int | None, signal: str) -> None:
    sub = client.submit(c.RestartContainer(ref=ref, timeout=timeout, signal=signal))
    grace = (timeout if timeout is not None and timeout >= 0 else 10) + client.timeout
    _, record = client.wait_event(
        sub.result.container_id, sub.last_event_id,
        lambda ev: isinstance(ev, e.ContainerRestarted | e.StartFailed), grace)
    if isinstance(record.event, e.StartFailed):
        # Docker loses the class of every restart failure: a 500.
        raise Internal(f"Cannot restart container {ref}: {record.event.error}")


async def restart(request: web.Request) -> web.Response:
    client = ctx(request).client(request)
    await run(_restart, client, request.match_info["id"], query_int(request, "t"),
              request.query.get("signal", ""))
    return _no_content()


def _kill(client: Client, ref: str, signal: str) -> None:
    sub = client.submit(c.KillContainer(ref=ref, signal=signal))
    try:
        number = parse_signal(signal)
    except ValueError:
        return
    if number != _SIGKILL:
        return  # other signals are only delivered, as in dockerd
    try:
        client.wait_exit(sub, _KILL_WAIT)
    except Timeout:
        raise Internal("tried to kill container, but did not receive an exit event") from None


async def kill(request: web.Request) -> web.Response:
    client = ctx(request).client(request)
    await run(_kill, client, request.match_info["id"], request.query.get("signal") or "SIGKILL")
    return _no_content()


async def remove(request: web.Request) -> web.Response:
    ref = request.match_info["id"]
    if query_bool(request, "link"):
        await run(ctx(request).client(request).submit, c.RemoveLink(name=ref))
        return _no_content()
    client = ctx(request).client(request)
    await run(client.remove, ref, query_bool(request, "force"), True, query_bool(request, "v"))
    return _no_content()


async def remove_link(request: web.Request) -> web.Response:
    """`DELETE /containers/<parent>/<alias>?link=1` (`docker rm --link`)."""
    name = f"/{request.match_info['parent'].lstrip('/')}/{request.match_info['alias']}"
    if not query_bool(request, "link"):
        raise MoorError(f"No such container: {name}")
    await run(ctx(request).client(request).submit, c.RemoveLink(name=name))
    return _no_content()


async def rename(request: web.Request) -> web.Response:
    client = ctx(request).client(request)
    await run(client.rename, request.match_info["id"], request.query.get("name", ""))
    return _no_content()
