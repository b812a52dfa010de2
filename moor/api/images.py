"""Image endpoints: list, inspect, load (`docker load`), remove; pull and import delegate.

The engine's World is the list of images; their content lives in this host's store
(workers.storage.images). A load writes the request body to a file under the data root, reads
it with `workers.storage.archives.load_archive`, and registers every image through the client.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from aiohttp import web

from commands import schema as c
from commands.client import Client
from engine.core.state import Image, World
from engine.errors import InvalidParameter
from events import model as e
from moor.api.context import ApiContext, ctx, run
from moor.api.http import dumps, json_response, query_bool, spooled_body
from projections.views.filters import check_keys, match_kv, parse_filters_json
from projections.views.inspect import find_image, inspect_image

__all__ = ["create", "inspect", "list_", "load", "remove"]



def _created_s(image: Image) -> int:
    # The unit of Image.created is not pinned down by its writers: large values are ns.
    return image.created // 1_000_000_000 if image.created >= 10**12 else image.created


def _item(image: Image) -> dict[str, Any]:
    return {"Id": image.id, "ParentId": "", "RepoTags": list(image.repo_tags),
            "RepoDigests": list(image.repo_digests), "Created": _created_s(image),
            "Size": image.size,
            "SharedSize": -1, "Labels": dict(image.config.labels), "Containers": -1}


def _matches(image: Image, filters: dict[str, list[str]]) -> bool:
    if "dangling" in filters:
        dangling = any(v.lower() in ("1", "true") for v in filters["dangling"])
        if dangling != (not image.repo_tags):
            return False
    if "reference" in filters:
        refs = list(image.repo_tags)
        bare = [t.rsplit(":", 1)[0] for t in refs]
        if not any(fnmatch.fnmatchcase(r, pattern) for pattern in filters["reference"]
                   for r in (*refs, *bare)):
            return False
    return "label" not in filters or match_kv(filters["label"], image.config.labels)


def list_images(world: World, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Return `/images/json` items, newest first."""
    check_keys(filters, ("dangling", "label", "reference"))
    chosen = [i for i in world.images.values() if _matches(i, filters)]
    chosen.sort(key=lambda i: (_created_s(i), i.id), reverse=True)
    return [_item(i) for i in chosen]


async def list_(request: web.Request) -> web.Response:
    filters = parse_filters_json(request.query.get("filters"))
    world = await run(ctx(request).world)
    return json_response(list_images(world, filters))


async def inspect(request: web.Request) -> web.Response:
    world = await run(ctx(request).world)
    name = request.match_info["name"]
    return json_response(inspect_image(world, find_image(world, name)))


def _load_file(context: ApiContext, client: Client, path: str) -> list[str]:
    from moor.hostcli import register_image
    from workers.storage.archives import load_archive

    lines = []
    for info in load_archive(context.data_root, path):
        register_image(client, info)
        if info.repo_tags:
            lines += [f"Loaded image: {tag}\n" for tag in info.repo_tags]
        else:
            lines.append(f"Loaded image ID: {info.id}\n")
    return lines


async def load(request: web.Request) -> web.Response:
    context = ctx(request)
    async with spooled_body(request, context.data_root, "load") as path:
        if os.path.getsize(path) == 0:
            raise InvalidParameter("invalid tar archive: the request body is empty")
        lines = await run(_load_file, context, context.client(request), path)
    body = b"".join(dumps({"stream": line}) for line in lines)
    return web.Response(body=body, content_type="application/json")


def _remove(context: ApiContext, client: Client, ref: str, force: bool) -> list[dict[str, str]]:
    from moor.api.imageops import facts_of
    from workers.storage import images as store

    sub = client.submit(c.RemoveImage(ref=ref, force=force))
    out: list[dict[str, str]] = []
    for ev in facts_of(context, sub.last_event_id):
        if isinstance(ev, e.ImageRemoved):
            out += [{"Untagged": tag} for tag in ev.untagged]
            if ev.deleted:
                out.append({"Deleted": ev.image_id})
    # The engine decided first (refused while used); the files go once it forgot them.
    world = context.world()
    for info in store.list_images(context.data_root):
        if info.id not in world.images:
            store.remove_image(context.data_root, info.id)
    return out


async def remove(request: web.Request) -> web.Response:
    context = ctx(request)
    result = await run(_remove, context, context.client(request), request.match_info["name"],
                       query_bool(request, "force"))
    return json_response(result)


async def create(request: web.Request) -> web.StreamResponse:
    """`POST /images/create`: a pull or an import (moor.api.distribution)."""
    from moor.api.distribution import create as create_image

    return await create_image(request)
