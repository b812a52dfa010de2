"""`POST /containers/prune`: remove every stopped container the filters select."""

from __future__ import annotations

import time

from aiohttp import web

from moor.api.context import ctx, run
from moor.api.http import json_response
from moor.pruning import prune_containers
from projections.views.filters import parse_filters_json

__all__ = ["prune"]


async def prune(request: web.Request) -> web.Response:
    context = ctx(request)
    filters = parse_filters_json(request.query.get("filters"))
    world = await run(context.world)
    deleted, reclaimed = await run(prune_containers, context.client(request), world, filters,
                                   context.data_root, time.time_ns())
    return json_response({"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed})
