"""Read image archives (``docker save`` tarballs, OCI layouts) into the image store.

Both formats come as a tar or, for OCI, also as a plain directory. What is read:

- ``docker save``: ``manifest.json`` lists, per image, its config file, its layer files
  (bottom-most first) and its ``RepoTags``. Docker 25+ also writes ``index.json``; when
  ``manifest.json`` is present it wins.
- OCI layout: ``oci-layout`` and ``index.json``; indexes (nested ones too) are followed to
  this host's ``linux/<arch>`` manifest; every blob is checked against its digest and size.
  Names come from ``io.containerd.image.name`` or a full ``org.opencontainers.image.ref.name``.

Tags are checked before any layer is extracted, layers already in the store are not read,
and everything runs under the store's writer lock (:func:`workers.storage.images.writing`), so a
refused archive leaves no layers behind.

Errors are :class:`workers.storage.images.BadImage` for archives that are not loadable images and
:class:`workers.storage.tarsafe.ArchiveError` / ``UnsafeArchive`` for layers (all HTTP 400).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from typing import IO, Any

import msgspec

from workers.storage.images import (
    BadImage,
    ImageInfo,
    StoreWriter,
    config_diff_ids,
    host_arch,
    valid_tag,
    writing,
)

__all__ = ["load_archive"]

_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_JSON = 32 << 20
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")


def load_archive(root: str, path: str) -> list[ImageInfo]:
    """Load every image of a ``docker save`` tarball or an OCI layout (dir or tar)."""
    with writing(root) as store, _Source(path) as src:
        if src.exists("manifest.json"):
            loaded = _load_docker(store, src)
        elif src.exists("index.json") and src.exists("oci-layout"):
            loaded = _load_oci(store, src)
        else:
            raise BadImage(f"{path}: neither a docker save archive (manifest.json) "
                           "nor an OCI layout (oci-layout, index.json)")
    if not loaded:
        raise BadImage(f"{path}: no image for linux/{host_arch()} in the archive")
    return list({i.id: i for i in loaded}.values())


class _Source:
    """Read the named files of an image archive, whether a directory or a tar."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if not os.path.isdir(path):
            try:
                self.tar = tarfile.open(path, "r:*")
                # Tools differ on a leading "./"; index by the normalised name.
                self.members = {m.name.lstrip("/").removeprefix("./"): m
                                for m in self.tar.getmembers()}
            except (OSError, tarfile.TarError, EOFError) as e:
                raise BadImage(f"cannot read image archive {path}: {e}") from e

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tar is not None:
            self.tar.close()

    def _dir_path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise BadImage(f"archive names an unsafe path {name!r}")
        return os.path.join(self.path, name)

    def exists(self, name: str) -> bool:
        """Return True if the archive holds a file called name."""
        if self.tar is not None:
            return name in self.members
        return os.path.isfile(self._dir_path(name))

    def open(self, name: str) -> IO[bytes]:
        """Open a file of the archive for streaming."""
        if self.tar is not None:
            member = self.members.get(name.removeprefix("./"))
            f = self.tar.extractfile(member) if member is not None else None
            if f is None:
                raise BadImage(f"{self.path}: no file {name!r} in the archive")
            return f
        try:
            return open(self._dir_path(name), "rb")
        except FileNotFoundError:
            raise BadImage(f"{self.path}: no file {name!r} in the archive") from None

    def read(self, name: str) -> bytes:
        """Read a small (JSON) file of the archive."""
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise BadImage(f"{self.path}: {name!r} is larger than {_MAX_JSON} bytes")
        return data


def _decode(data: bytes, typ: Any, what: str) -> Any:
    try:
        return msgspec.json.decode(data, type=typ)
    except msgspec.DecodeError as e:  # also covers ValidationError
        raise BadImage(f"invalid {what}: {e}") from e


# --- docker save --------------------------------------------------------------------------

class _DockerEntry(msgspec.Struct, rename="pascal"):
    config: str
    layers: list[str]
    repo_tags: list[str] | None = None


def _load_docker(store: StoreWriter, src: _Source) -> list[ImageInfo]:
    loaded = []
    for entry in _decode(src.read("manifest.json"), list[_DockerEntry], "manifest.json"):
        tags = [valid_tag(t) for t in entry.repo_tags or []]  # refuse before extracting
        raw = src.read(entry.config)
        diff_ids = config_diff_ids(raw)
        if len(diff_ids) != len(entry.layers):
            raise BadImage(f"{entry.config}: {len(diff_ids)} diff ids for "
                           f"{len(entry.layers)} layers")
        for name, diff_id in zip(entry.layers, diff_ids, strict=True):
            if not store.has_layer(diff_id):
                with src.open(name) as f:
                    store.add_layer(f, expect_diff_id=diff_id)
        loaded.append(store.add_image(raw, tags))
    return loaded


# --- OCI layout ---------------------------------------------------------------------------

class _Platform(msgspec.Struct):
    architecture: str = ""
    os: str = ""


class _Descriptor(msgspec.Struct, rename="camel"):
    digest: str
    media_type: str = ""
    size: int = -1
    annotations: dict[str, str] | None = None
    platform: _Platform | None = None


class _Index(msgspec.Struct):
    manifests: list[_Descriptor] = []


class _Manifest(msgspec.Struct):
    config: _Descriptor
    layers: list[_Descriptor] = []


def _blob_name(desc: _Descriptor) -> str:
    algo, _, hexpart = desc.digest.partition(":")
    if algo != "sha256" or not _HEX.fullmatch(hexpart):
        raise BadImage(f"unsupported or invalid blob digest {desc.digest!r}")
    return f"blobs/sha256/{hexpart}"


def _read_blob(src: _Source, desc: _Descriptor) -> bytes:
    data = src.read(_blob_name(desc))
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise BadImage(f"blob {desc.digest} does not match its digest")
    if desc.size >= 0 and len(data) != desc.size:
        raise BadImage(f"blob {desc.digest} is {len(data)} bytes, descriptor says {desc.size}")
    return data


def _oci_name(desc: _Descriptor, inherited: str | None) -> str | None:
    """Pick an image name from a descriptor's annotations.

    ``org.opencontainers.image.ref.name`` may be a bare tag ("latest") with no repository,
    so it counts only when it looks like a full reference (has ":" or "/").
    """
    notes = desc.annotations or {}
    name = notes.get("io.containerd.image.name")
    if name is None:
        ref = notes.get("org.opencontainers.image.ref.name", "")
        name = ref if (":" in ref or "/" in ref) else None
    return name or inherited


def _oci_manifests(src: _Source, index: _Index, inherited: str | None,
                   depth: int = 0) -> Iterator[tuple[_Descriptor, str | None]]:
    """Yield (manifest descriptor, name) for this host's platform, following nested indexes."""
    if depth > 4:
        raise BadImage("OCI indexes nested too deeply")
    for desc in index.manifests:
        plat = desc.platform
        if plat is not None and (plat.os != "linux" or plat.architecture != host_arch()):
            continue  # other platforms, and buildx attestations (unknown/unknown)
        name = _oci_name(desc, inherited)
        if desc.media_type in _INDEX_TYPES:
            sub = _decode(_read_blob(src, desc), _Index, f"index {desc.digest}")
            yield from _oci_manifests(src, sub, name, depth + 1)
        else:
            yield desc, name


def _load_oci(store: StoreWriter, src: _Source) -> list[ImageInfo]:
    index = _decode(src.read("index.json"), _Index, "index.json")
    loaded = []
    for desc, name in _oci_manifests(src, index, None):
        tags = [valid_tag(name)] if name else []  # refuse before extracting
        manifest = _decode(_read_blob(src, desc), _Manifest, f"manifest {desc.digest}")
        raw = _read_blob(src, manifest.config)
        diff_ids = config_diff_ids(raw)
        if len(diff_ids) != len(manifest.layers):
            raise BadImage(f"manifest {desc.digest}: {len(diff_ids)} diff ids for "
                           f"{len(manifest.layers)} layers")
        for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
            if "zstd" in layer.media_type:
                raise BadImage(f"layer {layer.digest}: zstd compression is not supported")
            if not store.has_layer(diff_id):
                with src.open(_blob_name(layer)) as f:
                    store.add_layer(f, expect_diff_id=diff_id, expect_blob_digest=layer.digest)
        loaded.append(store.add_image(raw, tags))
    return loaded
