"""`GET /containers/{id}/changes` (`docker diff`) and `POST /commit` (`docker commit`).

Both read the container's overlay upper dir on this host (moor.committing); a commit
records the new image through the `CommitContainer` command.
"""

from __future__ import annotations

from aiohttp import web

from engine.errors import InvalidParameter
from moor.api.context import ctx, run
from moor.api.http import json_body, json_response, query_bool
from moor.committing import commit as commit_container
from moor.committing import container_changes

__all__ = ["changes", "commit"]


async def changes(request: web.Request) -> web.Response:
    """Answer Docker's change list, or `null` when nothing changed (as dockerd)."""
    context = ctx(request)
    world = await run(context.world)
    found = await run(container_changes, context.data_root, world, request.match_info["id"])
    return json_response([c.docker() for c in found] or None)


async def commit(request: web.Request) -> web.Response:
    """Commit with dockerd's query parameters; a JSON body, if any, is the Config to apply."""
    context = ctx(request)
    query = request.query
    ref = query.get("container", "")
    if not ref:
        raise InvalidParameter("No container name or ID supplied")  # moby's missing-param text
    config = None
    if request.can_read_body:
        body = await json_body(request)
        if body is not None and not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: the commit body must be a Config object")
        config = body
    repo, tag = query.get("repo", ""), query.get("tag", "")
    reference = f"{repo}:{tag}" if repo and tag else repo
    world = await run(context.world)
    image_id = await run(commit_container, context.client(request), world, context.data_root,
                         ref, reference=reference, comment=query.get("comment", ""),
                         author=query.get("author", ""), changes=query.getall("changes", []),
                         config=config, pause=query_bool(request, "pause", default=True))
    return json_response({"Id": image_id}, status=201)
