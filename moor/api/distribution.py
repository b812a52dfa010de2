"""Registry endpoints: pull and import (`POST /images/create`), push, tag, login (`/auth`).

Pulls and pushes stream Docker's JSON messages. The response starts with the first
message, so a failure before it (a bad reference, an unknown manifest, denied access) is
a plain HTTP error with Docker's status, and one after it an in-stream error, as dockerd.
The engine records what happened: the pulled or imported image (`RegisterImage` with its
origin and repository digest), a tag, a push (`RecordImagePush`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from commands import schema as c
from commands.client import Client
from engine.core.names import normalize_image_ref
from engine.errors import Forbidden, InvalidParameter, MoorError
from moor.api.context import ApiContext, ctx, run
from moor.api.http import (
    JSON,
    NotImplementedHere,
    dumps,
    json_body,
    json_response,
    spooled_body,
)
from moor.distribution import progress as msg
from moor.distribution.auth import AuthConfig, decode_registry_auth
from moor.distribution.client import connect, new_session
from moor.distribution.errors import RegistryError
from moor.distribution.manifest import parse_platform
from moor.distribution.pull import pull
from moor.distribution.push import push
from moor.distribution.reference import Reference, parse_reference
from moor.distribution.settings import Settings, endpoints_for
from projections.views.inspect import find_image

__all__ = ["auth", "create", "push_image", "register_pulled", "tag"]

Emit = Callable[[dict[str, Any]], None]


async def progress_stream(request: web.Request,
                          job: Callable[[Emit], Awaitable[None]]) -> web.StreamResponse:
    """Run job, streaming what it emits; its error is HTTP before the first message, else
    an in-stream error message (status 200 already sent)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(job(queue.put_nowait))
    resp: web.StreamResponse | None = None

    async def write(item: dict[str, Any]) -> None:
        nonlocal resp
        if resp is None:
            resp = web.StreamResponse(headers={"Content-Type": JSON})
            await resp.prepare(request)
        await resp.write(dumps(item))

    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await write(getter.result())
                continue
            getter.cancel()
            while not queue.empty():
                await write(queue.get_nowait())
            break
        exc = task.exception()
        if exc is not None:
            err = _as_moor(exc)
            if resp is None:
                raise err from exc
            await write(msg.error(err.message))
    finally:
        if not task.done():
            task.cancel()
    if resp is None:
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        await resp.prepare(request)
    await resp.write_eof()
    return resp


def _as_moor(exc: BaseException) -> MoorError:
    if isinstance(exc, MoorError):
        return exc
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return RegistryError(str(exc) or type(exc).__name__)
    return MoorError(str(exc) or type(exc).__name__)


def _settings() -> Settings:
    return Settings.from_env()


# --- pull --------------------------------------------------------------------------------

def _pull_ref(image: str, tag: str) -> Reference:
    """Docker's postImagesCreate: `tag` is a tag or a digest that completes fromImage."""
    if image == "scratch":
        raise Forbidden("'scratch' is a reserved name")
    ref = parse_reference(image, default_tag=False)
    if tag:
        if tag.startswith("sha256:"):
            ref = ref.with_digest(tag)
        else:
            ref = parse_reference(f"{ref.name}:{tag}")
    elif not ref.tag and not ref.digest:
        ref = ref.with_tag("latest")
    return ref


def register_pulled(client: Client, info: Any, ref: Reference, digest: str) -> None:
    """Record a pulled image: Docker's `pull` event, its tag and repository digest."""
    from moor.hostcli import image_fields

    fields = image_fields(info)
    fields["repo_tags"] = (normalize_image_ref(ref.familiar),) if ref.tag else ()
    client.submit(c.RegisterImage(**fields, origin="pull", source_ref=ref.familiar,
                                  repo_digests=(f"{ref.familiar_name}@{digest}",)))


async def create(request: web.Request) -> web.StreamResponse:
    """`POST /images/create`: a pull (fromImage) or an import (fromSrc)."""
    if request.query.get("fromSrc"):
        return await _import(request)
    image = request.query.get("fromImage", "")
    if not image:
        raise InvalidParameter("fromImage or fromSrc is required")
    ref = _pull_ref(image, request.query.get("tag", ""))
    platform = parse_platform(request.query.get("platform", ""))
    credentials = decode_registry_auth(request.headers.get("X-Registry-Auth"))
    context = ctx(request)
    client = context.client(request)

    async def job(emit: Emit) -> None:
        result = await pull(context.data_root, ref, credentials, platform, _settings(), emit)
        await run(register_pulled, client, result.info, ref, result.digest)
        emit(msg.status(f"Digest: {result.digest}"))
        news = "Image is up to date for" if result.up_to_date else "Downloaded newer image for"
        emit(msg.status(f"Status: {news} {ref.familiar}"))

    return await progress_stream(request, job)


# --- import ------------------------------------------------------------------------------

def _import_file(context: ApiContext, client: Client, path: str, ref: str,
                 changes: list[str], message: str) -> str:
    from moor.hostcli import image_fields
    from workers.storage.commit import apply_changes
    from workers.storage.images import import_rootfs

    config = apply_changes({}, changes)
    info = import_rootfs(context.data_root, path, ref or None, raw_config=config,
                         comment=message or "Imported from -")
    client.submit(c.RegisterImage(**image_fields(info), origin="import"))
    return info.id


async def _import(request: web.Request) -> web.StreamResponse:
    if request.query.get("fromSrc") != "-":
        raise NotImplementedHere("moorage imports only a tar sent in the request body "
                                 "(fromSrc=-), not from a URL")
    repo, tag = request.query.get("repo", ""), request.query.get("tag", "")
    ref = ""
    if repo:
        parsed = parse_reference(repo, default_tag=False)
        if tag:
            parsed = parse_reference(f"{parsed.name}:{tag}")
        ref = normalize_image_ref(parsed.familiar if parsed.tag else f"{parsed.familiar}")
    context = ctx(request)
    async with spooled_body(request, context.data_root, "import") as path:
        image_id = await run(_import_file, context, context.client(request), path, ref,
                             request.query.getall("changes", []),
                             request.query.get("message", ""))
    return web.Response(body=dumps(msg.status(image_id)), content_type=JSON)


# --- tag ---------------------------------------------------------------------------------

def _tag(context: ApiContext, client: Client, name: str, new: str) -> None:
    from workers.storage.images import config_bytes, writing

    world = context.world()
    image = find_image(world, name)
    client.submit(c.TagImage(ref=image.id, tag=new))
    with writing(context.data_root) as store:  # the host's tag file follows the engine
        store.add_image(config_bytes(context.data_root, image.id), [new])


async def tag(request: web.Request) -> web.Response:
    """`POST /images/{name}/tag?repo=&tag=` (Docker answers 201, no body)."""
    repo, tag_ = request.query.get("repo", ""), request.query.get("tag", "")
    ref = parse_reference(repo, default_tag=False)
    if ref.digest:
        raise InvalidParameter("refusing to create a tag with a digest reference")
    if tag_:
        ref = parse_reference(f"{ref.name}:{tag_}")
    elif not ref.tag:
        ref = ref.with_tag("latest")
    context = ctx(request)
    await run(_tag, context, context.client(request), request.match_info["name"],
              normalize_image_ref(ref.familiar))
    return web.Response(status=201)


# --- push --------------------------------------------------------------------------------

def _local(context: ApiContext, ref: Reference) -> tuple[Any, list[str]]:
    from workers.storage.images import get_image

    world = context.world()
    image = find_image(world, normalize_image_ref(ref.familiar))
    return get_image(context.data_root, image.id), [*image.repo_tags, *image.repo_digests]


async def push_image(request: web.Request) -> web.StreamResponse:
    """`POST /images/{name}/push?tag=`: push one tag, or every tag of the repository."""
    name = request.match_info["name"]
    base = parse_reference(name, default_tag=False)
    query_tag = request.query.get("tag", "")
    credentials = decode_registry_auth(request.headers.get("X-Registry-Auth"))
    context = ctx(request)
    client = context.client(request)
    world = await run(context.world)
    if query_tag or base.tag:
        tags = [query_tag or base.tag]
    else:
        prefix = base.familiar_name + ":"
        tags = sorted(t[len(prefix):] for t in world.tags if t.startswith(prefix)
                      and "/" not in t[len(prefix):])

    async def job(emit: Emit) -> None:
        emit(msg.status(f"The push refers to repository [{base.name}]"))
        if not tags:
            raise RegistryError(f"An image does not exist locally with the tag: "
                                f"{base.familiar_name}")
        for t in tags:
            ref = parse_reference(f"{base.name}:{t}")
            try:
                info, names = await run(_local, context, ref)
            except MoorError:
                raise RegistryError(f"An image does not exist locally with the tag: "
                                    f"{ref.familiar_name}") from None
            done = await push(context.data_root, ref, info, credentials, _settings(), emit,
                              names)
            await run(client.submit, c.RecordImagePush(
                ref=info.id, pushed=ref.familiar,
                repo_digest=f"{ref.familiar_name}@{done.digest}"))

    return await progress_stream(request, job)


# --- login -------------------------------------------------------------------------------

def _domain_of(server: str) -> str:
    server = server.strip()
    for scheme in ("https://", "http://"):
        server = server.removeprefix(scheme)
    domain = server.split("/", 1)[0]
    if domain in ("", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return domain


async def auth(request: web.Request) -> web.Response:
    """`POST /auth`: check the credentials against the registry (`docker login`)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: expected an AuthConfig object")
    config = AuthConfig(**{k: str(v) for k, v in body.items()
                           if k in AuthConfig.__struct_fields__ and v is not None})
    domain = _domain_of(config.serveraddress)
    settings = _settings()
    async with new_session(settings) as session:
        try:
            repos = await connect(session, endpoints_for(domain, settings, push=True), "",
                                  config, push=False)
        except (aiohttp.ClientError, OSError) as e:
            raise RegistryError(str(e)) from e
        await repos[0].login()
    return json_response({"Status": "Login Succeeded", "IdentityToken": ""})
