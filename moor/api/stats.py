"""`GET /containers/{id}/stats` and `GET /containers/{id}/top`, as dockerd answers them.

Stats (moby daemon/stats.go, v28): `stream` (default true) writes one document per
reading of the host's collector (moor.api.collector), each carrying the previous one as
`precpu_stats`/`preread`, until the client leaves or the container is removed; while
the container is stopped the documents are zeroed, as dockerd's are. `stream=false`
waits for a second reading so the CPU delta is filled (a stopped container: one zeroed
document at once); `one-shot=true` (API ≥ 1.41) reads once, now, with nothing before.

Top (daemon/top_unix.go): the host's `ps` filtered to the container's cgroup
(workers.proc.top), 409 unless the container runs.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.errors import Conflict, InvalidParameter
from moor.api.collector import Reading, Subscription, collector_for, engine_parent
from moor.api.context import ctx, run
from moor.api.http import JSON, api_version, dumps, json_response, query_bool
from projections.views.inspect import find_container
from workers.proc import top as host_top
from workers.proc.stats import document

__all__ = ["stats", "top"]


async def stats(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    ctr, checkpoint = await run(context.live, request.match_info["id"])
    stream = query_bool(request, "stream", default=True)
    one_shot = api_version(request) >= (1, 41) and query_bool(request, "one-shot")
    if stream and one_shot:
        raise InvalidParameter("cannot have stream=true and one-shot=true")
    name = f"/{ctr.name}"
    collector = collector_for(request, ctr.id)
    if not stream:
        if not ctr.running or ctr.restarting:
            return json_response(document(name, ctr.id, None))
        if one_shot:
            return json_response(document(name, ctr.id, await run(collector.read, ctr)))
    sub = await collector.subscribe(ctr, checkpoint)
    try:
        if not stream:
            return json_response(await _second(sub, name, ctr.id))
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        await resp.prepare(request)
        previous = None
        async for reading in sub:
            await resp.write(dumps(document(name, ctr.id, reading, previous)))
            previous = reading
    finally:
        collector.unsubscribe(sub)
    await resp.write_eof()
    return resp


async def _second(sub: Subscription, name: str, cid: str) -> dict[str, Any]:
    """Return the second reading after the first (stream=false), all in one response.

    dockerd sends nothing, headers included, until the document is written; the docker
    CLI gives a container 2 s from the response's headers, and a new subscriber of a
    running collector may wait up to two intervals.
    """
    readings: list[Reading] = []
    async for reading in sub:
        readings.append(reading)
        if len(readings) == 2:
            return document(name, cid, reading, readings[0])
    return document(name, cid, None)  # removed meanwhile


async def top(request: web.Request) -> web.Response:
    ps_args = request.query.get("ps_args", "")
    host_top.validate_ps_args(ps_args or "-ef")  # dockerd checks before the lookup
    context = ctx(request)
    ctr = find_container(await run(context.world), request.match_info["id"])
    if not ctr.running:
        raise Conflict(f"container {ctr.id} is not running")
    if ctr.restarting:
        raise Conflict(f"Container {ctr.id} is restarting, wait until the container is "
                       "running")
    listing = await run(host_top.top, ctr.id, engine_parent(context.shard_context(ctr.id)),
                        ps_args)
    await run(context.client(request).note_action, ctr.id, "top")
    return json_response(listing)
