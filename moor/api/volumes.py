"""Volume endpoints: create, list, inspect, remove, prune (Docker's JSON and texts).

Each change is a command the engine decides (engine.core.volumes); the directories are
the workers' (workers.storage.volumes), reads come from the projection.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.errors import InvalidParameter
from moor.api.context import ctx, run
from moor.api.http import json_body, json_response, query_bool
from moor.pruning import prune_volumes
from projections.views.filters import parse_filters_json
from projections.views.volumes import find_volume, list_volumes, volume_doc

__all__ = ["create", "inspect", "list_", "prune", "remove"]


def _text_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"invalid {name}: expected an object")
    return {str(k): str(v) for k, v in value.items()}


async def create(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: the body must be an object")
    context = ctx(request)
    client = context.client(request)
    name = await run(lambda: client.create_volume(
        name=body.get("Name") or "", driver=body.get("Driver") or "",
        labels=_text_map(body.get("Labels"), "Labels"),
        options=_text_map(body.get("DriverOpts"), "DriverOpts")))
    world = await run(context.world)
    return json_response(volume_doc(find_volume(world, name), context.data_root), status=201)


async def list_(request: web.Request) -> web.Response:
    context = ctx(request)
    world = await run(context.world)
    found = list_volumes(world, parse_filters_json(request.query.get("filters")))
    return json_response({"Volumes": [volume_doc(v, context.data_root) for v in found],
                          "Warnings": None})


async def inspect(request: web.Request) -> web.Response:
    context = ctx(request)
    world = await run(context.world)
    vol = find_volume(world, request.match_info["name"])
    return json_response(volume_doc(vol, context.data_root))


async def remove(request: web.Request) -> web.Response:
    client = ctx(request).client(request)
    await run(client.remove_volume, request.match_info["name"], query_bool(request, "force"))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    context = ctx(request)
    world = await run(context.world)
    deleted, reclaimed = await run(prune_volumes, context.client(request), world,
                                   parse_filters_json(request.query.get("filters")),
                                   context.data_root)
    return json_response({"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed})
