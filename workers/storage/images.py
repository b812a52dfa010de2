"""Store images on the host: content-addressed layers, config JSON and tags.

Layout under a data root (``MOOR_DATA_ROOT``, default ``/var/lib/moorage``)::

    layers/sha256/<diff hex>/        an extracted layer, used as an overlay lower dir
    layers/sha256/<diff hex>.json    {"size": ..., "entries": ...} of that layer
    images/sha256/<image hex>.json   the image config, byte for byte (id = its sha256)
    images/repositories.json         {"busybox:latest": "sha256:<image hex>", ...}
    images/.lock                     flock held by every writer

Writers (import, load, remove) hold one flock for their whole run, so a layer that a load
has found present cannot be collected under it; loads are rare, so the serialisation is
cheap. Layers are extracted by :mod:`workers.storage.tarsafe`; archives are read by
:mod:`workers.storage.archives`, which writes through :func:`writing`. Tags are in the engine's
normal form (:func:`engine.core.names.normalize_image_ref`), so the engine finds what we store.

This module is the store's face; its parts: :mod:`~workers.storage.imagerefs` (reference
grammar), :mod:`~workers.storage.imageconfig` (the config JSON, :class:`ImageInfo`) and
:mod:`~workers.storage.storefiles` (paths, lock, tags, layer collection).

Exceptions (rooted in :mod:`engine.errors`)::

    InvalidParameter (400)
    ├── InvalidReference   a reference Docker would refuse
    └── BadImage           an archive or config that is not a loadable image
    NotFound (404)
    └── ImageNotFound      no image with that reference or id
    Conflict (409)
    └── ImageInUse         a layer only this image holds is mounted
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO, cast

import msgspec

from engine.core.names import normalize_image_ref
from engine.errors import Conflict, MoorError, NotFound
from events.specs import ImageConfig
from workers.storage import tarsafe
from workers.storage.imageconfig import (
    HEX,
    BadImage,
    ImageInfo,
    config_diff_ids,
    config_of,
    created_ns,
    docker_config,
    host_arch,
    parse_config,
)
from workers.storage.imagerefs import InvalidReference, valid_tag
from workers.storage.storefiles import (
    LayerMeta,
    busy_layers,
    collect,
    has_layer,
    images_dir,
    layer_meta,
    layers_dir,
    locked,
    read_tags,
    referenced,
    tags_path,
    write_atomic,
)

__all__ = [
    "BadImage",
    "ImageInUse",
    "ImageInfo",
    "ImageNotFound",
    "InvalidReference",
    "LayerBlob",
    "StoreWriter",
    "config_bytes",
    "config_diff_ids",
    "created_ns",
    "dirs_of_layers",
    "docker_config",
    "get_image",
    "has_layer",
    "host_arch",
    "import_rootfs",
    "layer_blob",
    "layer_dirs",
    "list_images",
    "prune_layers",
    "remove_image",
    "replace_blob",
    "valid_tag",
    "writing",
]


class ImageNotFound(NotFound):
    """Signal a reference or id that names no stored image."""


class ImageInUse(Conflict):
    """Signal that removing an image would pull a layer out from under a mount."""


def _image_hex(image_id: str) -> str:
    hexpart = image_id.removeprefix("sha256:")
    if not HEX.fullmatch(hexpart):
        raise ImageNotFound(f"No such image: {image_id}")
    return hexpart


def _read_config(root: str, image_id: str) -> bytes:
    try:
        with open(os.path.join(images_dir(root), _image_hex(image_id) + ".json"), "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageNotFound(f"No such image: {image_id}") from None


def _info(root: str, image_id: str, raw: bytes, tags: dict[str, str]) -> ImageInfo:
    image = parse_config(raw)
    layers = tuple(image.rootfs.diff_ids)
    return ImageInfo(
        id=image_id,
        repo_tags=tuple(sorted(t for t, i in tags.items() if i == image_id)),
        layers=layers,
        created=image.created,
        size=sum(layer_meta(root, d).size for d in set(layers)),
        config=config_of(image.config),
    )


# --- writing ------------------------------------------------------------------------------

class _Tee:
    """Copy every byte read from a stream to a file (the layer's kept blob)."""

    def __init__(self, src: Any, out: Any) -> None:
        self._src, self._out = src, out

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self._out.write(data)
        return data


@contextmanager
def _source(stream: Any) -> Iterator[Any]:
    if isinstance(stream, str):
        with open(stream, "rb") as f:
            yield f
    else:
        yield stream


class StoreWriter:
    """Add layers and images to a store whose writer lock is held; made by :func:`writing`."""

    def __init__(self, root: str) -> None:
        self.root = root

    def has_layer(self, diff_id: str) -> bool:
        """Return True if the layer with diff_id is extracted in the store."""
        return has_layer(self.root, diff_id)

    def add_layer(self, stream: Any, *, expect_diff_id: str | None = None,
                  expect_blob_digest: str | None = None, adopt_blob: bool = False) -> str:
        """Extract a layer (a binary stream or a path) into the store; return its diff id.

        The bytes read are kept as the layer's blob (see LayerMeta). With adopt_blob,
        `stream` is a path on the store's filesystem (a verified download) that becomes
        the blob by a rename instead of a copy.
        """
        parent = layers_dir(self.root)
        fd, tee_path = tempfile.mkstemp(prefix=".tmp-blob-", dir=parent)
        os.close(fd)
        try:
            if adopt_blob:
                staged = tarsafe.stage_layer(stream, parent, expect_diff_id=expect_diff_id)
            else:
                with open(tee_path, "wb") as out, _source(stream) as src:
                    staged = tarsafe.stage_layer(cast(BinaryIO, _Tee(src, out)), parent,
                                                 expect_diff_id=expect_diff_id)
            if expect_blob_digest is not None and staged.info.blob_digest != expect_blob_digest:
                tarsafe.discard(staged)
                raise BadImage(f"layer blob digest is {staged.info.blob_digest}, "
                               f"expected {expect_blob_digest}")
            hexpart = staged.info.diff_id.removeprefix("sha256:")
            blob = stream if adopt_blob else tee_path
            blob_size = os.path.getsize(blob)
            with open(blob, "rb") as f:
                compressed = f.read(2) == b"\x1f\x8b"
            if not os.path.exists(os.path.join(parent, hexpart + ".blob")):
                try:
                    os.rename(blob, os.path.join(parent, hexpart + ".blob"))
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    # Another filesystem: copy under a temp name (collected if we crash),
                    # then rename, so a blob under its final name is always whole.
                    shutil.copyfile(blob, tee_path)
                    os.rename(tee_path, os.path.join(parent, hexpart + ".blob"))
            # Metadata first: a layer dir under its final name is always complete and
            # described.
            meta = msgspec.json.encode(LayerMeta(
                size=staged.info.size, entries=staged.info.entries,
                blob=staged.info.blob_digest, blob_size=blob_size, compressed=compressed))
            write_atomic(os.path.join(parent, hexpart + ".json"), meta)
            tarsafe.commit(staged, os.path.join(parent, hexpart))
            return staged.info.diff_id
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tee_path)

    def add_image(self, config_raw: bytes, tags: Sequence[str]) -> ImageInfo:
        """Record a config whose layers are all present and point tags at it."""
        wanted = {valid_tag(t) for t in tags}
        for d in config_diff_ids(config_raw):
            if not has_layer(self.root, d):
                raise BadImage(f"image config names layer {d}, which is not in the store")
        hexpart = hashlib.sha256(config_raw).hexdigest()
        image_id = "sha256:" + hexpart
        path = os.path.join(images_dir(self.root), hexpart + ".json")
        if not os.path.exists(path):
            write_atomic(path, config_raw)
        current = read_tags(self.root)
        if any(current.get(t) != image_id for t in wanted):
            # A tag moves to the new image, as in Docker; the old image stays, untagged.
            current.update({t: image_id for t in wanted})
            write_atomic(tags_path(self.root),
                         msgspec.json.encode(dict(sorted(current.items()))))
        return _info(self.root, image_id, config_raw, current)


@contextmanager
def writing(root: str) -> Iterator[StoreWriter]:
    """Hold the writer lock; if the write fails, collect the layers it left unreferenced."""
    with locked(root):
        try:
            yield StoreWriter(root)
        except BaseException:
            try:
                collect(root)
            except (OSError, MoorError):
                pass  # the original error matters more; the next prune retries
            raise


def import_rootfs(root: str, tar_path: str, ref: str | None = None, *,
                  config: ImageConfig | None = None, created: str | None = None,
                  comment: str = "", raw_config: dict[str, Any] | None = None) -> ImageInfo:
    """Make a one-layer image from a rootfs tarball, like ``docker import``.

    raw_config, when given, is the Config in Docker's JSON names (`--change` applied).
    """
    tags = [valid_tag(ref)] if ref else []
    when = created or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with writing(root) as store:
        diff_id = store.add_layer(tar_path)
        doc = {
            "architecture": host_arch(),
            "config": raw_config if raw_config is not None
            else docker_config(config or ImageConfig()),
            "created": when,
            "history": [{"created": when, "comment": comment or "Imported from tarball"}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        return store.add_image(msgspec.json.encode(doc), tags)


# --- queries and removal ------------------------------------------------------------------

def list_images(root: str) -> list[ImageInfo]:
    """Return every stored image, newest first."""
    tags = read_tags(root)
    out = []
    try:
        names = os.listdir(images_dir(root))
    except FileNotFoundError:
        return []
    for name in names:
        if name.endswith(".json") and HEX.fullmatch(name[:-5]):
            image_id = "sha256:" + name[:-5]
            out.append(_info(root, image_id, _read_config(root, image_id), tags))
    return sorted(out, key=created_ns, reverse=True)


def get_image(root: str, ref_or_id: str) -> ImageInfo:
    """Return the image named by a tag, a full id or a unique id prefix."""
    tags = read_tags(root)
    image_id = None
    if not ref_or_id.startswith("sha256:"):
        image_id = tags.get(normalize_image_ref(ref_or_id))
    if image_id is None:
        prefix = ref_or_id.removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            raise ImageNotFound(f"No such image: {ref_or_id}")
        try:
            names = os.listdir(images_dir(root))
        except FileNotFoundError:
            names = []
        hits = [n[:-5] for n in names if n.endswith(".json") and n.startswith(prefix)]
        if len(hits) != 1:
            which = "ambiguous image id" if hits else "No such image"
            raise ImageNotFound(f"{which}: {ref_or_id}")
        image_id = "sha256:" + hits[0]
    return _info(root, image_id, _read_config(root, image_id), tags)


def config_bytes(root: str, image_id: str) -> bytes:
    """Return an image's config JSON byte for byte (its sha256 is the image id)."""
    return _read_config(root, image_id)


class LayerBlob(msgspec.Struct, frozen=True):
    """A layer's kept blob: where it is, its digest and size, and whether it is gzip."""

    path: str
    digest: str
    size: int
    compressed: bool


def layer_blob(root: str, diff_id: str) -> LayerBlob:
    """Return the blob a layer arrived as; BadImage if the store kept none for it."""
    meta = layer_meta(root, diff_id)
    path = os.path.join(layers_dir(root), diff_id.removeprefix("sha256:") + ".blob")
    if not meta.blob or not os.path.exists(path):
        raise BadImage(f"layer {diff_id} was stored before moorage kept layer blobs: "
                       "load or pull the image again to push or save it")
    return LayerBlob(path=path, digest=meta.blob, size=meta.blob_size,
                     compressed=meta.compressed)


def replace_blob(root: str, diff_id: str, path: str, digest: str) -> LayerBlob:
    """Make a gzip of a layer's plain blob its kept blob (lock held): pushes send gzip."""
    layers = layers_dir(root)
    hexpart = diff_id.removeprefix("sha256:")
    meta = layer_meta(root, diff_id)
    size = os.path.getsize(path)
    os.rename(path, os.path.join(layers, hexpart + ".blob"))
    write_atomic(os.path.join(layers, hexpart + ".json"), msgspec.json.encode(LayerMeta(
        size=meta.size, entries=meta.entries, blob=digest, blob_size=size, compressed=True)))
    return layer_blob(root, diff_id)


def layer_dirs(root: str, image_id: str) -> list[str]:
    """Return the image's layer dirs top-most first, the order overlay's lowerdir wants."""
    return dirs_of_layers(root, parse_config(_read_config(root, image_id)).rootfs.diff_ids)


def dirs_of_layers(root: str, diff_ids: Sequence[str]) -> list[str]:
    """Return the dirs of diff_ids (given bottom-most first, as images list them) top first."""
    dirs = []
    for d in reversed(diff_ids):
        path = os.path.join(layers_dir(root), d.removeprefix("sha256:"))
        if not HEX.fullmatch(d.removeprefix("sha256:")) or not os.path.isdir(path):
            raise BadImage(f"layer {d} is not in the store")
        dirs.append(path)
    return dirs


def remove_image(root: str, image_id: str) -> bool:
    """Delete an image, its tags and the layers no other image uses; False if absent."""
    hexpart = _image_hex(image_id)
    image_id = "sha256:" + hexpart
    with locked(root):
        path = os.path.join(images_dir(root), hexpart + ".json")
        try:
            with open(path, "rb") as f:
                mine = {d[7:] for d in parse_config(f.read()).rootfs.diff_ids}
        except FileNotFoundError:
            return False
        others = set().union(*(v for k, v in referenced(root).items() if k != hexpart))
        if busy_layers(root) & (mine - others):
            raise ImageInUse(f"image {image_id} has layers in use by a mounted container")
        tags = read_tags(root)
        if image_id in tags.values():
            kept = {t: i for t, i in tags.items() if i != image_id}
            write_atomic(tags_path(root), msgspec.json.encode(kept))
        os.unlink(path)
        collect(root)
        return True


def prune_layers(root: str) -> list[str]:
    """Delete layers no image references and no mount uses; return their diff ids."""
    with locked(root):
        return collect(root)
