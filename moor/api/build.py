"""`POST /build`: the classic builder (`DOCKER_BUILDKIT=0 docker build`, docker-py).

The body is the build context as a tar (plain or compressed); it is spooled under the
data root, unpacked with the layer policy (workers.storage.tarsafe) and built by
moor.building. What can be refused before the first line (bad query, no Dockerfile, a
parse error, an unknown target) is an HTTP error; after that, errors come in the stream
as `{"errorDetail": ..., "error": ...}` with status 200, as dockerd does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from aiohttp import web

from engine.errors import InvalidParameter
from moor.api.context import ctx, run
from moor.api.http import JSON, dumps, query_bool, thread_stream
from moor.building import Builder, BuildOptions, prepare, quiet

__all__ = ["build"]

_CHUNK = 1 << 20


def _json_map(request: web.Request, name: str, what: str) -> dict[str, str]:
    text = request.query.get(name, "")
    if not text:
        return {}
    try:
        value: Any = json.loads(text)
    except ValueError as exc:
        raise InvalidParameter(f"error reading {what}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidParameter(f"error reading {what}: not a JSON object")
    # A null value asks the client to take it from its environment: nothing reaches us.
    return {str(k): str(v) for k, v in value.items() if v is not None}


def options_of(request: web.Request) -> BuildOptions:
    """Read the classic builder's query parameters."""
    query = request.query
    if query.get("remote"):
        raise InvalidParameter("remote build contexts are not supported by moorage: "
                               "send the context as the request body")
    return BuildOptions(
        dockerfile=query.get("dockerfile") or "Dockerfile",
        tags=[t for t in query.getall("t", []) if t],
        build_args=_json_map(request, "buildargs", "build args"),
        target=query.get("target", ""),
        nocache=query_bool(request, "nocache"),
        rm=query_bool(request, "rm", default=True),
        forcerm=query_bool(request, "forcerm"),
        labels=_json_map(request, "labels", "labels"),
        quiet=query_bool(request, "q"),
        platform=query.get("platform", ""),
    )


def _unpack(spooled: str, dest: str) -> None:
    from workers.storage import tarsafe

    if os.path.getsize(spooled) == 0:
        os.makedirs(dest)  # an empty context: the Dockerfile check answers
        return
    tarsafe.extract_layer(spooled, dest)


async def build(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    options = options_of(request)
    spool = os.path.join(context.data_root, "tmp")
    await run(os.makedirs, spool, exist_ok=True)
    work = await run(tempfile.mkdtemp, prefix="build-", dir=spool)
    try:
        body = os.path.join(work, "context.tar")
        with open(body, "wb") as f:
            async for chunk in request.content.iter_chunked(_CHUNK):
                await run(f.write, chunk)
        tree = os.path.join(work, "context")
        await run(_unpack, body, tree)
        await run(os.unlink, body)
        prepared = await run(prepare, tree, options)
        client = context.client(request)
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        await resp.prepare(request)

        def messages(stop: Any) -> Any:
            out = Builder(client, context.data_root, prepared, options, stop=stop).run()
            return quiet(out) if options.quiet else out

        async for msg in thread_stream(messages):
            await resp.write(dumps(msg))
        await resp.write_eof()
        return resp
    finally:
        await run(shutil.rmtree, work, True)
