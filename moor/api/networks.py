"""The Engine API's network routes (`/networks/...`) over moor.netops and the projection."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from commands import schema as c
from commands.codec import CODEC
from engine.core.networks import resolve_network
from engine.errors import InvalidParameter
from events import model as e
from events.netspecs import EndpointSettings
from moor import netops
from moor.api.context import ctx, run
from moor.api.http import json_body, json_response
from projections.views.filters import parse_filters_json
from projections.views.networks import list_networks, network_doc
from projections.views.points import parse_time

__all__ = ["connect", "create", "disconnect", "inspect", "list_", "prune", "remove"]


async def list_(request: web.Request) -> web.Response:
    world = await run(ctx(request).world)
    filters = parse_filters_json(request.query.get("filters"))
    return json_response(list_networks(world, filters))


async def inspect(request: web.Request) -> web.Response:
    world = await run(ctx(request).world)
    name = resolve_network(world, request.match_info["id"])
    return json_response(network_doc(world, name))


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key) or ""
    if not isinstance(value, str):
        raise InvalidParameter(f"invalid JSON: {key} must be a string")
    return value


async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON body")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise InvalidParameter(f"moorage supports only the bridge network driver, not {driver}")
    if body.get("EnableIPv6"):
        raise InvalidParameter("moorage networks are IPv4 only (EnableIPv6)")
    ipam = body.get("IPAM") or {}
    configs = ipam.get("Config") or []
    if len(configs) > 1:
        raise InvalidParameter("moorage supports one IPAM config (one IPv4 subnet) per network")
    pool = configs[0] if configs else {}
    context = ctx(request)
    world = await run(context.world)
    client = context.client(request)
    nid = await run(lambda: netops.create_network(
        client, world, _text(body, "Name"), subnet=_text(pool, "Subnet"),
        gateway=_text(pool, "Gateway"), ip_range=_text(pool, "IPRange"),
        labels=dict(body.get("Labels") or {}), internal=bool(body.get("Internal")),
        options=dict(body.get("Options") or {})))
    return json_response({"Id": nid, "Warning": ""}, status=201)


async def remove(request: web.Request) -> web.Response:
    client = ctx(request).client(request)
    await run(client.submit, c.RemoveNetwork(network=request.match_info["id"]))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    filters = parse_filters_json(request.query.get("filters"))
    until = parse_time(filters["until"][0], time.time_ns()) if filters.get("until") else 0
    cmd = c.PruneNetworks(labels=tuple(filters.get("label", [])),
                          not_labels=tuple(filters.get("label!", [])), until=until)
    client = ctx(request).client(request)
    sub = await run(client.submit, cmd)
    names = await run(_pruned_names, ctx(request), sub.last_event_id)
    return json_response({"NetworksDeleted": names or None})


def _pruned_names(context: Any, last_id: str) -> list[str]:
    """Read back the prune's own fact (the last record the command wrote)."""
    for _, fields in context.redis.xrange(context.keys.events, last_id, last_id):
        record = CODEC.record(fields[b"d"])
        if isinstance(record.event, e.NetworksPruned):
            return list(record.event.names)
    return []


async def connect(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    cfg = body.get("EndpointConfig") or {}
    ipam = cfg.get("IPAMConfig") or {}
    settings = EndpointSettings(aliases=tuple(cfg.get("Aliases") or ()),
                                ipv4_address=ipam.get("IPv4Address") or "",
                                mac_address=cfg.get("MacAddress") or "")
    client = ctx(request).client(request)
    await run(netops.connect, client, request.match_info["id"], _text(body, "Container"),
              settings)
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    client = ctx(request).client(request)
    await run(netops.disconnect, client, request.match_info["id"], _text(body, "Container"),
              bool(body.get("Force")))
    return web.Response(status=200)
