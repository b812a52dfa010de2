"""Pull an image from a registry into this host's store, reporting Docker's progress.

Order (dockerd's `distribution/pull_v2.go`): the manifest (a list or index is narrowed to
the platform), the config (its digest is the image id), then the layers the store lacks,
downloaded `max_downloads` at a time into a spool dir, each verified against its digest,
and extracted in order under the store's writer lock, each as soon as it and the ones
below it are there. A failure anywhere leaves no image and, through the store's writer,
no stray layer. The caller registers the result with the engine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moor.distribution import progress as msg
from moor.distribution.auth import AuthConfig
from moor.distribution.client import Repository, connect, new_session
from moor.distribution.errors import RegistryError, RegistryNotFound
from moor.distribution.manifest import (
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    Platform,
    decode_index,
    decode_manifest,
    select_manifest,
)
from moor.distribution.reference import Reference
from moor.distribution.settings import Settings, endpoints_for
from workers.storage.imageconfig import config_diff_ids
from workers.storage.images import ImageInfo, StoreWriter, has_layer, writing
from workers.storage.storefiles import images_dir, read_tags

__all__ = ["PullResult", "pull"]

Emit = Callable[[dict[str, Any]], None]
_EVERY = 512 << 10  # bytes between two Downloading messages of one layer


@dataclass(frozen=True)
class PullResult:
    info: ImageInfo
    digest: str  # the manifest's (or the index's) digest: Docker's `Digest:` line
    up_to_date: bool


async def _resolve(repos: list[Repository], ref: Reference) -> tuple[Repository, bytes, str,
                                                                     str]:
    """Fetch the manifest from the first endpoint that has it (mirrors may not)."""
    last: Exception | None = None
    for repo in repos:
        try:
            body, kind, digest = await repo.manifest(ref.reference, ref.familiar)
            return repo, body, kind, digest
        except RegistryNotFound as e:
            if not repo.endpoint.mirror:
                raise
            last = e
    assert last is not None
    raise last


async def pull(root: str, ref: Reference, auth: AuthConfig, platform: Platform,
               settings: Settings, emit: Emit) -> PullResult:
    """Pull ref into the store under root; emit Docker's JSON messages as it goes."""
    async with new_session(settings) as session:
        repos = await connect(session, endpoints_for(ref.domain, settings), ref.path, auth,
                              familiar=ref.familiar_name)
        repo, body, kind, top_digest = await _resolve(repos, ref)
        # dockerd's first message comes once the manifest is there: a missing one is an
        # HTTP error, not an in-stream one.
        emit(msg.status(f"Pulling from {ref.familiar_name}", ref.tag or ref.digest))
        if kind in DOCKER_SCHEMA1:
            raise RegistryError(
                "[DEPRECATION NOTICE] Docker Image Format v1 and Docker Image manifest "
                f"version 2, schema 1 support has been removed. Suggest the author of "
                f"{ref.familiar} to upgrade the image to the OCI Format or Docker Image "
                "manifest v2, schema 2.")
        if kind in INDEX_TYPES:
            chosen = select_manifest(decode_index(body), platform)
            body, kind, _ = await repo.manifest(chosen.digest, ref.familiar)
            if kind in INDEX_TYPES:
                raise RegistryError(f"{chosen.digest}: nested manifest lists are not supported")
        manifest = decode_manifest(body)
        image_id = manifest.config.digest
        tag = ref.familiar if ref.tag else ""
        known = os.path.exists(os.path.join(images_dir(root), image_id[7:] + ".json"))
        if known and all(has_layer(root, d) for d in _local_diff_ids(root, image_id)):
            # dockerd fetches nothing when the config is already local.
            was = read_tags(root).get(tag) if tag else image_id
            info = await asyncio.to_thread(_tag_existing, root, image_id, tag)
            return PullResult(info, top_digest, up_to_date=was == image_id)
        config = await repo.blob_bytes(image_id)
        diff_ids = config_diff_ids(config)
        if len(diff_ids) != len(manifest.layers):
            raise RegistryError(f"manifest {top_digest} has {len(manifest.layers)} layers, "
                                f"its config {len(diff_ids)}")
        info = await _fetch_layers(root, repo, manifest.layers, diff_ids, config, tag,
                                   settings, emit)
    return PullResult(info, top_digest, up_to_date=False)


def _local_diff_ids(root: str, image_id: str) -> list[str]:
    with open(os.path.join(images_dir(root), image_id[7:] + ".json"), "rb") as f:
        return config_diff_ids(f.read())


def _tag_existing(root: str, image_id: str, tag: str) -> ImageInfo:
    with writing(root) as store, open(
            os.path.join(images_dir(root), image_id[7:] + ".json"), "rb") as f:
        return store.add_image(f.read(), [tag] if tag else [])


async def _fetch_layers(root: str, repo: Repository, layers: list[Any], diff_ids: list[str],
                        config: bytes, tag: str, settings: Settings, emit: Emit) -> ImageInfo:
    spool = os.path.join(root, "tmp", f"pull-{uuid.uuid4().hex}")
    os.makedirs(spool, exist_ok=True)
    limit = asyncio.Semaphore(settings.max_downloads)
    wanted: list[int] = []
    for n, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        ident = msg.short(layer.digest)
        if has_layer(root, diff_id):
            emit(msg.status("Already exists", ident, detail=True))
        else:
            emit(msg.status("Pulling fs layer", ident, detail=True))
            wanted.append(n)
    for n in wanted:
        emit(msg.status("Waiting", msg.short(layers[n].digest), detail=True))

    async def download(n: int) -> str:
        layer = layers[n]
        ident = msg.short(layer.digest)
        dest = os.path.join(spool, f"{n}-{layer.digest[7:]}")
        async with limit:
            last = [-_EVERY]

            def report(done: int) -> None:
                if done - last[0] >= _EVERY or done == layer.size:
                    last[0] = done
                    emit(msg.progress("Downloading", ident, done, layer.size))

            report(0)
            await repo.download(layer.digest, layer.size, dest, report)
        emit(msg.status("Verifying Checksum", ident, detail=True))
        emit(msg.status("Download complete", ident, detail=True))
        return dest

    tasks = {n: asyncio.ensure_future(download(n)) for n in wanted}
    store_cm = writing(root)
    store: StoreWriter | None = None
    entered = False
    try:
        for n in wanted:
            path = await tasks[n]
            if not entered:
                # Taken when the first layer is there: loads and other pulls wait less.
                store = await asyncio.to_thread(store_cm.__enter__)
                entered = True
            ident = msg.short(layers[n].digest)
            size = os.path.getsize(path)
            emit(msg.progress("Extracting", ident, 0, size))
            assert store is not None
            await asyncio.to_thread(store.add_layer, path, expect_diff_id=diff_ids[n],
                                    expect_blob_digest=layers[n].digest, adopt_blob=True)
            emit(msg.progress("Extracting", ident, size, size))
            emit(msg.status("Pull complete", ident, detail=True))
        if not entered:
            store = await asyncio.to_thread(store_cm.__enter__)
            entered = True
        assert store is not None
        info = await asyncio.to_thread(store.add_image, config, [tag] if tag else [])
    except BaseException as e:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if entered:
            await asyncio.to_thread(store_cm.__exit__, type(e), e, e.__traceback__)
            entered = False
        raise
    finally:
        if entered:
            await asyncio.to_thread(store_cm.__exit__, None, None, None)
        shutil.rmtree(spool, ignore_errors=True)
    return info
