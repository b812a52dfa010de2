"""Push images of this host's store to a registry, reporting Docker's progress.

Each layer goes as the blob the store kept (`workers.storage.images.layer_blob`), so its
diff id and the image id do not change; a layer kept as a plain tar is gzipped once, and
the gzip kept instead. Per layer (id = 12 hex of the diff id): already in the repository
(HEAD), else mounted from another repository of the same registry that names the image,
else uploaded (one PUT, or PATCH chunks past `chunk_size`). Then the config and a Docker
schema2 manifest under the tag; its digest is what the registry now calls the image.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moor.distribution import progress as msg
from moor.distribution.auth import AuthConfig
from moor.distribution.client import Repository, connect, new_session
from moor.distribution.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST
from moor.distribution.reference import Reference, parse_reference
from moor.distribution.settings import Settings, endpoints_for
from workers.storage.images import (
    ImageInfo,
    LayerBlob,
    config_bytes,
    layer_blob,
    replace_blob,
    writing,
)
from workers.storage.storefiles import layers_dir

__all__ = ["Pushed", "push"]

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Pushed:
    tag: str
    digest: str
    size: int


def gzip_blob(root: str, diff_id: str) -> LayerBlob:
    """Return the layer's gzip blob, making and keeping it from a plain tar if needed."""
    blob = layer_blob(root, diff_id)
    if blob.compressed:
        return blob
    with writing(root):
        blob = layer_blob(root, diff_id)
        if blob.compressed:
            return blob
        fd, tmp = tempfile.mkstemp(prefix=".tmp-gz-", dir=layers_dir(root))
        h = hashlib.sha256()

        class _Hashing:
            def __init__(self, f: Any) -> None:
                self.f = f

            def write(self, data: bytes) -> int:
                h.update(data)
                return int(self.f.write(data))

            def flush(self) -> None:
                self.f.flush()

        try:
            with os.fdopen(fd, "wb") as out, open(blob.path, "rb") as src:
                # mtime 0 and no name: the same layer always gzips to the same digest.
                with gzip.GzipFile(fileobj=_Hashing(out), mode="wb", mtime=0,  # type: ignore[arg-type]
                                   filename="") as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            return replace_blob(root, diff_id, tmp, "sha256:" + h.hexdigest())
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def mount_sources(ref: Reference, names: Sequence[str]) -> list[str]:
    """Other repositories of ref's registry that name the image (candidates for a mount)."""
    out: list[str] = []
    for name in names:
        try:
            other = parse_reference(name)
        except Exception:  # noqa: BLE001 - a malformed stored name is just no candidate
            continue
        if other.domain == ref.domain and other.path != ref.path and other.path not in out:
            out.append(other.path)
    return out


async def _push_blob(repo: Repository, ident: str, blob_path: str, digest: str, size: int,
                     sources: list[str], settings: Settings, emit: Emit) -> None:
    if await repo.has_blob(digest):
        emit(msg.status("Layer already exists", ident, detail=True))
        return
    location = None
    for source in sources:
        location = await repo.mount(digest, source)
        if location is None:
            emit(msg.status(f"Mounted from {source}", ident, detail=True))
            return
        break  # the registry opened an upload instead: use it
    if location is None:
        location = await repo.start_upload()
    last = [-1]

    def report(done: int) -> None:
        if done != last[0]:
            last[0] = done
            emit(msg.progress("Pushing", ident, done, size))

    report(0)
    await repo.upload(location, blob_path, digest, size, settings.chunk_size, report)
    emit(msg.status("Pushed", ident, detail=True))


async def push(root: str, ref: Reference, info: ImageInfo, auth: AuthConfig,
               settings: Settings, emit: Emit, names: Sequence[str] = ()) -> Pushed:
    """Push one local image as ref (which has a tag); names: its other references."""
    async with new_session(settings) as session:
        repos = await connect(session, endpoints_for(ref.domain, settings, push=True), ref.path,
                              auth, familiar=ref.familiar_name, push=True)
        repo = repos[0]
        sources = mount_sources(ref, names)
        config = await asyncio.to_thread(config_bytes, root, info.id)
        blobs: list[LayerBlob] = []
        for diff_id in info.layers:
            emit(msg.status("Preparing", msg.short(diff_id), detail=True))
        for diff_id in info.layers:
            emit(msg.status("Waiting", msg.short(diff_id), detail=True))
        for diff_id in info.layers:
            blobs.append(await asyncio.to_thread(gzip_blob, root, diff_id))
        limit = asyncio.Semaphore(settings.max_uploads)

        async def one(diff_id: str, blob: LayerBlob) -> None:
            async with limit:
                await _push_blob(repo, msg.short(diff_id), blob.path, blob.digest, blob.size,
                                 sources, settings, emit)

        seen: set[str] = set()
        jobs = []
        for diff_id, blob in zip(info.layers, blobs, strict=True):
            if blob.digest not in seen:
                seen.add(blob.digest)
                jobs.append(one(diff_id, blob))
        await asyncio.gather(*jobs)
        if not await repo.has_blob(info.id):
            location = await repo.start_upload()
            os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=os.path.join(root, "tmp")) as f:
                f.write(config)
                f.flush()
                await repo.upload(location, f.name, info.id, len(config), len(config) + 1,
                                  lambda _: None)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": info.id},
            "layers": [{"mediaType": DOCKER_LAYER, "size": b.size, "digest": b.digest}
                       for b in blobs],
        }
        body = json.dumps(manifest, indent=3).encode()
        digest = await repo.put_manifest(ref.tag, body, DOCKER_MANIFEST)
    emit(msg.status(f"{ref.tag}: digest: {digest} size: {len(body)}"))
    emit(msg.aux({"Tag": ref.tag, "Digest": digest, "Size": len(body)}))
    return Pushed(ref.tag, digest, len(body))
