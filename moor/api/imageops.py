"""Image endpoints over the host's store: history, save (`docker save`), prune.

History reads the config's own history; save writes the `docker save` format (a
manifest.json naming each config and its layers as plain tars, as `docker load` and
`moor image load` read it); prune decides which images go from the engine's World and
removes them through the engine's own `RemoveImage`, then the files it forgot.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
import zlib
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from commands import schema as c
from commands.client import Client
from commands.codec import CODEC
from engine.core.state import Image, World
from engine.errors import InvalidParameter, MoorError
from events import model as e
from moor.api.context import ApiContext, ctx, run
from moor.api.http import json_response
from projections.views.filters import check_keys, match_kv, parse_filters_json
from projections.views.inspect import find_image
from projections.views.points import parse_time

__all__ = ["facts_of", "history", "prune", "save", "save_one"]

_CHUNK = 1 << 20


def facts_of(context: ApiContext, last_event_id: str, limit: int = 1000) -> list[e.Event]:
    """Return the events one command produced, in order (they are contiguous, ending at
    its last event id)."""
    out: list[e.Event] = []
    command = None
    for _, fields in context.redis.xrevrange(context.keys.events, max=last_event_id,
                                             count=limit):
        record = CODEC.record(fields[b"d"])
        if command is None:
            command = record.meta.command_id
        elif record.meta.command_id != command:
            break
        out.append(record.event)
    return out[::-1]


# --- history -----------------------------------------------------------------------------

def _created_s(text: str) -> int:
    try:
        return parse_time(text, 0) // 1_000_000_000 if text else 0
    except MoorError:
        return 0


def _history_rows(root: str, image: Image) -> list[dict[str, Any]]:
    from workers.storage.images import config_bytes
    from workers.storage.storefiles import layer_meta

    doc = json.loads(config_bytes(root, image.id))
    layers = list((doc.get("rootfs") or {}).get("diff_ids") or [])
    entries = list(doc.get("history") or [])
    if not entries:  # no history recorded: one row per layer, as the image's creation
        entries = [{"created": doc.get("created", "")} for _ in layers] or [{}]
    rows = []
    next_layer = 0
    for entry in entries:
        size = 0
        if not entry.get("empty_layer") and next_layer < len(layers):
            size = layer_meta(root, layers[next_layer]).size
            next_layer += 1
        rows.append({"Id": "<missing>", "Created": _created_s(str(entry.get("created", ""))),
                     "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                     "Comment": entry.get("comment", "")})
    rows.reverse()  # newest first
    rows[0]["Id"] = image.id
    rows[0]["Tags"] = list(image.repo_tags) or None
    return rows


async def history(request: web.Request) -> web.Response:
    """`GET /images/{name}/history`."""
    context = ctx(request)
    world = await run(context.world)
    image = find_image(world, request.match_info["name"])
    return json_response(await run(_history_rows, context.data_root, image))


# --- save --------------------------------------------------------------------------------

def _layer_tar(root: str, diff_id: str, spool: str) -> str:
    """Write a layer's plain tar (its diff id's bytes) to a spool file; return the path."""
    from workers.storage.images import layer_blob

    blob = layer_blob(root, diff_id)
    if not blob.compressed:
        return blob.path
    path = os.path.join(spool, diff_id[7:] + ".tar")
    if not os.path.exists(path):
        inflate = zlib.decompressobj(wbits=31)
        with open(blob.path, "rb") as src, open(path, "wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(inflate.decompress(chunk))
            out.write(inflate.flush())
    return path


def _add_file(tar: tarfile.TarFile, name: str, path: str | None = None,
              data: bytes | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    assert path is not None
    info.size = os.path.getsize(path)
    with open(path, "rb") as f:
        tar.addfile(info, f)


def _write_save(context: ApiContext, client: Client, refs: list[str], out_path: str) -> None:
    from workers.storage.images import config_bytes

    world = context.world()
    chosen: dict[str, list[str]] = {}
    for ref in refs:
        image = find_image(world, ref)
        tags = chosen.setdefault(image.id, [])
        if ref.startswith("sha256:") or image.id[7:].startswith(ref):
            continue  # by id: no names, as Docker
        if ":" in ref.rsplit("/", 1)[-1]:
            tags.append(_normal(ref))
        else:  # a bare repository: all its tags
            repo = _normal(ref).rsplit(":", 1)[0]
            tags += [t for t in image.repo_tags if t.rsplit(":", 1)[0] == repo]
    spool = os.path.join(context.data_root, "tmp", f"save-{uuid.uuid4().hex}")
    os.makedirs(spool)
    try:
        manifest = []
        written: set[str] = set()
        with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for image_id, tags in chosen.items():
                config = config_bytes(context.data_root, image_id)
                config_name = f"blobs/sha256/{image_id[7:]}"
                if config_name not in written:
                    _add_file(tar, config_name, data=config)
                    written.add(config_name)
                layers = []
                for diff_id in world.images[image_id].layers:
                    name = f"blobs/sha256/{diff_id[7:]}"
                    if name not in written:
                        _add_file(tar, name, _layer_tar(context.data_root, diff_id, spool))
                        written.add(name)
                    layers.append(name)
                manifest.append({"Config": config_name, "RepoTags": tags or None,
                                 "Layers": layers})
            _add_file(tar, "manifest.json", data=json.dumps(manifest).encode())
    finally:
        for name in os.listdir(spool):
            os.unlink(os.path.join(spool, name))
        os.rmdir(spool)
    for image_id in chosen:
        client.submit(c.NoteImageAction(action="save", ref=image_id))


def _normal(ref: str) -> str:
    from engine.core.names import normalize_image_ref

    return normalize_image_ref(ref)


async def _stream_save(request: web.Request, refs: list[str]) -> web.StreamResponse:
    if not refs:
        raise InvalidParameter("no image names given")
    context = ctx(request)
    spool = os.path.join(context.data_root, "tmp")
    await run(os.makedirs, spool, exist_ok=True)
    path = os.path.join(spool, f"save-{uuid.uuid4().hex}.tar")
    try:
        await run(_write_save, context, context.client(request), refs, path)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await resp.prepare(request)
        with open(path, "rb") as f:
            while chunk := await run(f.read, _CHUNK):
                await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        if os.path.exists(path):
            os.unlink(path)


async def save(request: web.Request) -> web.StreamResponse:
    """`GET /images/get?names=a&names=b`."""
    return await _stream_save(request, request.query.getall("names", []))


async def save_one(request: web.Request) -> web.StreamResponse:
    """`GET /images/{name}/get`."""
    return await _stream_save(request, [request.match_info["name"]])


# --- prune -------------------------------------------------------------------------------

def prune_candidates(world: World, filters: dict[str, list[str]], now_ns: int) -> list[Image]:
    """Docker's image prune choice: dangling (default) or every unused image (-a)."""
    check_keys(filters, ("dangling", "until", "label", "label!"))
    dangling = True
    for value in filters.get("dangling", []):
        if value.lower() in ("0", "false"):
            dangling = False
        elif value.lower() not in ("1", "true"):
            raise InvalidParameter(f"invalid filter 'dangling={value}'")
    until = [parse_time(v, now_ns) for v in filters.get("until", [])]
    used = {ctr.image_id for ctr in world.containers.values()}
    out = []
    for image in world.images.values():
        if image.id in used or (dangling and image.repo_tags):
            continue
        created = image.created if image.created >= 10**12 else image.created * 10**9
        if until and not all(created < u for u in until):
            continue
        if "label" in filters and not match_kv(filters["label"], image.config.labels):
            continue
        if "label!" in filters and match_kv(filters["label!"], image.config.labels):
            continue
        out.append(image)
    return sorted(out, key=lambda i: i.id)


def _layer_sizes(root: str) -> dict[str, int]:
    from workers.storage.storefiles import layer_meta, layers_dir

    try:
        names = os.listdir(layers_dir(root))
    except FileNotFoundError:
        return {}
    return {n: layer_meta(root, "sha256:" + n).size + layer_meta(root, "sha256:" + n).blob_size
            for n in names if len(n) == 64}


def _removed(facts: Iterable[e.Event]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for ev in facts:
        if isinstance(ev, e.ImageRemoved):
            out += [{"Untagged": t} for t in ev.untagged]
            if ev.deleted:
                out.append({"Deleted": ev.image_id})
    return out


def _prune(context: ApiContext, client: Client, filters: dict[str, list[str]],
           now_ns: int) -> dict[str, Any]:
    from workers.storage import images as store

    deleted: list[dict[str, str]] = []
    for image in prune_candidates(context.world(), filters, now_ns):
        refs = [*image.repo_tags[:-1], image.id]  # untag all but one, then the image
        for ref in refs:
            try:
                sub = client.submit(c.RemoveImage(ref=ref))
            except MoorError:
                break  # used since we looked, or gone: Docker skips it too
            deleted += _removed(facts_of(context, sub.last_event_id))
    before = _layer_sizes(context.data_root)
    world = context.world()
    for info in store.list_images(context.data_root):
        if info.id not in world.images:
            store.remove_image(context.data_root, info.id)
    after = _layer_sizes(context.data_root)
    reclaimed = sum(size for name, size in before.items() if name not in after)
    client.submit(c.NoteImageAction(action="prune", attributes={"reclaimed": str(reclaimed)}))
    return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}


async def prune(request: web.Request) -> web.Response:
    """`POST /images/prune?filters=`."""
    import time

    filters = parse_filters_json(request.query.get("filters"))
    context = ctx(request)
    return json_response(await run(_prune, context, context.client(request), filters,
                                   time.time_ns()))
