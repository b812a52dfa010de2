"""Store images on the host: content-addressed layers, config JSON and tags.

Layout under a data root (``MOOR_DATA_ROOT``, default ``/var/lib/moorage``)::

    layers/sha256/<diff hex>/        an extracted layer, used as an overlay lower dir
    layers/sha256/<diff hex>.json    {"size": ..., "entries": ...} of that layer
    images/sha256/<image hex>.json   the image config, byte for byte (id = its sha256)
    images/repositories.json         {"busybox:latest": "sha256:<image hex>", ...}
    images/.lock                     flock held by every writer

Writers (import, load, remove) hold one flock for their whole run, so a layer that a load
has found present cannot be collected under it; loads are rare, so the serialisation is
cheap. Layers are extracted by :mod:`workers.tarsafe`.

Exceptions::

    ImageError
    ├── ImageNotFound      no image with that reference or id
    ├── InvalidReference   a reference Docker would refuse
    ├── BadImage           an archive or config that is not a loadable image
    └── ImageInUse         a layer only this image holds is mounted
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from workers import rootfs, tarsafe

__all__ = [
    "BadImage",
    "ImageConfig",
    "ImageError",
    "ImageInUse",
    "ImageInfo",
    "ImageNotFound",
    "InvalidReference",
    "data_root",
    "dirs_of_layers",
    "docker_config",
    "get_image",
    "has_layer",
    "import_rootfs",
    "layer_dirs",
    "list_images",
    "load_archive",
    "normalize_ref",
    "prune_layers",
    "remove_image",
]

_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_JSON = 32 << 20


class ImageError(Exception):
    """Signal a failed image store operation."""


class ImageNotFound(ImageError):
    """Signal a reference or id that names no stored image."""


class InvalidReference(ImageError):
    """Signal an image reference Docker would refuse."""


class BadImage(ImageError):
    """Signal an archive or config that is not a loadable image."""


class ImageInUse(ImageError):
    """Signal that removing an image would pull a layer out from under a mount."""


class ImageConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True,
                  rename="pascal"):
    """The parts of an image config that shape a container (Docker's names on the wire)."""

    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    stop_signal: str = ""
    user: str = ""
    labels: dict[str, str] = {}


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Describe a stored image."""

    id: str  # "sha256:<hex>" of the config JSON
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]  # diff ids, bottom-most first (as in rootfs.diff_ids)
    created: str
    size: int
    config: ImageConfig


class _RawConfig(msgspec.Struct, rename="pascal"):
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] | None = None
    working_dir: str = ""
    exposed_ports: dict[str, Any] | None = None
    stop_signal: str = ""
    user: str = ""
    labels: dict[str, str] | None = None


class _RootFS(msgspec.Struct):
    type: str = "layers"
    diff_ids: list[str] = []


class _RawImage(msgspec.Struct):
    rootfs: _RootFS
    created: str = ""
    config: _RawConfig | None = None


class _LayerMeta(msgspec.Struct):
    size: int
    entries: int


def data_root() -> str:
    """Return the data root from ``MOOR_DATA_ROOT`` (default ``/var/lib/moorage``)."""
    return os.environ.get("MOOR_DATA_ROOT", "/var/lib/moorage")


# --- references ---------------------------------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


def normalize_ref(ref: str) -> str:
    """Return Docker's familiar "name:tag" form of ref ("busybox" -> "busybox:latest")."""
    if "@" in ref:
        raise InvalidReference(f"invalid reference format: digest references are not "
                               f"supported here: {ref!r}")
    name, tag = ref, "latest"
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not _TAG.fullmatch(tag):
        raise InvalidReference(f"invalid reference format: bad tag in {ref!r}")
    domain, _, rest = name.partition("/")
    # Docker treats the first component as a registry only if it looks like a host.
    if rest and ("." in domain or ":" in domain or domain == "localhost"):
        if not _DOMAIN.fullmatch(domain):
            raise InvalidReference(f"invalid reference format: bad registry in {ref!r}")
        path = rest
    else:
        domain, path = "", name
    if not _PATH.fullmatch(path) or len(name) > 255:
        raise InvalidReference(
            f"invalid reference format: repository name must be lowercase: {ref!r}"
            if path.lower() != path else f"invalid reference format: {ref!r}"
        )
    if domain in ("docker.io", "index.docker.io"):
        domain = ""
    if not domain and path.startswith("library/") and path.count("/") == 1:
        path = path[len("library/"):]
    return f"{domain}/{path}:{tag}" if domain else f"{path}:{tag}"


# --- files and locking --------------------------------------------------------------------

def _images_dir(root: str) -> str:
    return os.path.join(root, "images", "sha256")


def _layers_dir(root: str) -> str:
    return os.path.join(os.path.realpath(root), "layers", "sha256")


def _tags_path(root: str) -> str:
    return os.path.join(root, "images", "repositories.json")


def _write_atomic(path: str, data: bytes) -> None:
    """Write data to path so readers see the old or the new file, never a torn one."""
    tmp = f"{path}.tmp"  # only lock holders write, so one fixed temp name is enough
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


@contextmanager
def _locked(root: str) -> Iterator[None]:
    """Hold the store's writer lock, creating the store's directories on first use."""
    os.makedirs(_images_dir(root), exist_ok=True)
    os.makedirs(_layers_dir(root), exist_ok=True)
    fd = os.open(os.path.join(root, "images", ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _writing(root: str) -> Iterator[None]:
    """Hold the lock; if the write fails, collect the layers it left unreferenced."""
    with _locked(root):
        try:
            yield
        except BaseException:
            try:
                _collect(root)
            except (OSError, ImageError):
                pass  # the original error matters more; the next prune retries
            raise


def _read_tags(root: str) -> dict[str, str]:
    try:
        with open(_tags_path(root), "rb") as f:
            return msgspec.json.decode(f.read(), type=dict[str, str])
    except FileNotFoundError:
        return {}


def _image_hex(image_id: str) -> str:
    hexpart = image_id.removeprefix("sha256:")
    if not _HEX.fullmatch(hexpart):
        raise ImageNotFound(f"No such image: {image_id}")
    return hexpart


def _read_config(root: str, image_id: str) -> bytes:
    try:
        with open(os.path.join(_images_dir(root), _image_hex(image_id) + ".json"), "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageNotFound(f"No such image: {image_id}") from None


def _parse_config(raw: bytes) -> _RawImage:
    try:
        image = msgspec.json.decode(raw, type=_RawImage)
    except msgspec.DecodeError as e:  # also covers ValidationError
        raise BadImage(f"invalid image config: {e}") from e
    for d in image.rootfs.diff_ids:
        if not d.startswith("sha256:") or not _HEX.fullmatch(d[7:]):
            raise BadImage(f"invalid image config: bad diff id {d!r}")
    return image


def _config_of(raw: _RawConfig | None) -> ImageConfig:
    """Convert Docker's config JSON shape to ImageConfig."""
    if raw is None:
        return ImageConfig()
    ports = tuple(p if "/" in p else f"{p}/tcp" for p in (raw.exposed_ports or {}))
    return ImageConfig(
        cmd=None if raw.cmd is None else tuple(raw.cmd),
        entrypoint=None if raw.entrypoint is None else tuple(raw.entrypoint),
        env=tuple(raw.env or ()), working_dir=raw.working_dir, exposed_ports=ports,
        stop_signal=raw.stop_signal, user=raw.user, labels=dict(raw.labels or {}),
    )


def docker_config(config: ImageConfig) -> dict[str, Any]:
    """Return config in Docker's image-config JSON shape (ExposedPorts as a dict)."""
    out: dict[str, Any] = msgspec.to_builtins(config)
    if config.exposed_ports:
        out["ExposedPorts"] = {p: {} for p in config.exposed_ports}
    return out


def _layer_meta(root: str, diff_id: str) -> _LayerMeta:
    path = os.path.join(_layers_dir(root), diff_id.removeprefix("sha256:") + ".json")
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=_LayerMeta)
    except FileNotFoundError:
        return _LayerMeta(size=0, entries=0)


def _info(root: str, image_id: str, raw: bytes, tags: dict[str, str]) -> ImageInfo:
    image = _parse_config(raw)
    layers = tuple(image.rootfs.diff_ids)
    return ImageInfo(
        id=image_id,
        repo_tags=tuple(sorted(t for t, i in tags.items() if i == image_id)),
        layers=layers,
        created=image.created,
        size=sum(_layer_meta(root, d).size for d in set(layers)),
        config=_config_of(image.config),
    )


# --- layers -------------------------------------------------------------------------------

def has_layer(root: str, diff_id: str) -> bool:
    """Return True if the layer with diff_id is extracted in the store."""
    return os.path.isdir(os.path.join(_layers_dir(root), diff_id.removeprefix("sha256:")))


def _add_layer(root: str, stream: Any, *, expect_diff_id: str | None = None,
              expect_blob_digest: str | None = None) -> str:
    """Extract a layer stream into the store (caller holds the lock); return its diff id."""
    parent = _layers_dir(root)
    staged = tarsafe.stage_layer(stream, parent, expect_diff_id=expect_diff_id)
    if expect_blob_digest is not None and staged.info.blob_digest != expect_blob_digest:
        tarsafe.discard(staged)
        raise BadImage(f"layer blob digest is {staged.info.blob_digest}, "
                       f"expected {expect_blob_digest}")
    hexpart = staged.info.diff_id.removeprefix("sha256:")
    # Metadata first: a layer dir under its final name is always complete and described.
    meta = msgspec.json.encode(_LayerMeta(size=staged.info.size, entries=staged.info.entries))
    _write_atomic(os.path.join(parent, hexpart + ".json"), meta)
    tarsafe.commit(staged, os.path.join(parent, hexpart))
    return staged.info.diff_id


def _store_image(root: str, config_raw: bytes, tags: list[str]) -> ImageInfo:
    """Record a config whose layers are all present and point tags at it (lock held)."""
    image = _parse_config(config_raw)
    for d in image.rootfs.diff_ids:
        if not has_layer(root, d):
            raise BadImage(f"image config names layer {d}, which is not in the store")
    hexpart = hashlib.sha256(config_raw).hexdigest()
    image_id = "sha256:" + hexpart
    path = os.path.join(_images_dir(root), hexpart + ".json")
    if not os.path.exists(path):
        _write_atomic(path, config_raw)
    current = _read_tags(root)
    wanted = {normalize_ref(t) for t in tags}
    if any(current.get(t) != image_id for t in wanted):
        # A tag moves to the new image, as in Docker; the old image stays, untagged.
        current.update({t: image_id for t in wanted})
        _write_atomic(_tags_path(root), msgspec.json.encode(dict(sorted(current.items()))))
    return _info(root, image_id, config_raw, current)


def import_rootfs(root: str, tar_path: str, ref: str | None = None, *,
                  config: ImageConfig | None = None, created: str | None = None,
                  comment: str = "") -> ImageInfo:
    """Make a one-layer image from a rootfs tarball, like ``docker import``."""
    tags = [normalize_ref(ref)] if ref else []
    when = created or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with _writing(root):
        diff_id = _add_layer(root, tar_path)
        doc = {
            "architecture": _host_arch(),
            "config": docker_config(config or ImageConfig()),
            "created": when,
            "history": [{"created": when, "comment": comment or "Imported from tarball"}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        return _store_image(root, msgspec.json.encode(doc), tags)


def _host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def load_archive(root: str, path: str) -> list[ImageInfo]:
    """Load every image of a ``docker save`` tarball or an OCI layout (dir or tar)."""
    with _writing(root), _Source(path) as src:
        if src.exists("manifest.json"):  # docker save (Docker 25+ also writes index.json)
            loaded = _load_docker(root, src)
        elif src.exists("index.json") and src.exists("oci-layout"):
            loaded = _load_oci(root, src)
        else:
            raise BadImage(f"{path}: neither a docker save archive (manifest.json) "
                           "nor an OCI layout (oci-layout, index.json)")
    if not loaded:
        raise BadImage(f"{path}: no image for linux/{_host_arch()} in the archive")
    return list({i.id: i for i in loaded}.values())


# --- archives -----------------------------------------------------------------------------

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


class _DockerEntry(msgspec.Struct, rename="pascal"):
    config: str
    layers: list[str]
    repo_tags: list[str] | None = None


def _decode(data: bytes, typ: Any, what: str) -> Any:
    try:
        return msgspec.json.decode(data, type=typ)
    except msgspec.DecodeError as e:  # also covers ValidationError
        raise BadImage(f"invalid {what}: {e}") from e


def _load_docker(root: str, src: _Source) -> list[ImageInfo]:
    loaded = []
    for entry in _decode(src.read("manifest.json"), list[_DockerEntry], "manifest.json"):
        tags = [normalize_ref(t) for t in entry.repo_tags or []]  # refuse before extracting
        raw = src.read(entry.config)
        diff_ids = _parse_config(raw).rootfs.diff_ids
        if len(diff_ids) != len(entry.layers):
            raise BadImage(f"{entry.config}: {len(diff_ids)} diff ids for "
                           f"{len(entry.layers)} layers")
        for name, diff_id in zip(entry.layers, diff_ids, strict=True):
            if not has_layer(root, diff_id):
                with src.open(name) as f:
                    _add_layer(root, f, expect_diff_id=diff_id)
        loaded.append(_store_image(root, raw, tags))
    return loaded


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


_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")


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
        if plat is not None and (plat.os != "linux" or plat.architecture != _host_arch()):
            continue  # other platforms, and buildx attestations (unknown/unknown)
        name = _oci_name(desc, inherited)
        if desc.media_type in _INDEX_TYPES:
            sub = _decode(_read_blob(src, desc), _Index, f"index {desc.digest}")
            yield from _oci_manifests(src, sub, name, depth + 1)
        else:
            yield desc, name


def _load_oci(root: str, src: _Source) -> list[ImageInfo]:
    index = _decode(src.read("index.json"), _Index, "index.json")
    loaded = []
    for desc, name in _oci_manifests(src, index, None):
        tags = [normalize_ref(name)] if name else []  # refuse before extracting
        manifest = _decode(_read_blob(src, desc), _Manifest, f"manifest {desc.digest}")
        raw = _read_blob(src, manifest.config)
        diff_ids = _parse_config(raw).rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise BadImage(f"manifest {desc.digest}: {len(diff_ids)} diff ids for "
                           f"{len(manifest.layers)} layers")
        for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
            if "zstd" in layer.media_type:
                raise BadImage(f"layer {layer.digest}: zstd compression is not supported")
            if not has_layer(root, diff_id):
                with src.open(_blob_name(layer)) as f:
                    _add_layer(root, f, expect_diff_id=diff_id,
                               expect_blob_digest=layer.digest)
        loaded.append(_store_image(root, raw, tags))
    return loaded


# --- queries and removal ------------------------------------------------------------------

def list_images(root: str) -> list[ImageInfo]:
    """Return every stored image, newest first."""
    tags = _read_tags(root)
    out = []
    try:
        names = os.listdir(_images_dir(root))
    except FileNotFoundError:
        return []
    for name in names:
        if name.endswith(".json") and _HEX.fullmatch(name[:-5]):
            image_id = "sha256:" + name[:-5]
            out.append(_info(root, image_id, _read_config(root, image_id), tags))
    return sorted(out, key=lambda i: i.created, reverse=True)


def get_image(root: str, ref_or_id: str) -> ImageInfo:
    """Return the image named by a tag, a full id or a unique id prefix."""
    tags = _read_tags(root)
    image_id = None
    if not ref_or_id.startswith("sha256:"):
        try:
            image_id = tags.get(normalize_ref(ref_or_id))
        except InvalidReference:
            pass
    if image_id is None:
        prefix = ref_or_id.removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            raise ImageNotFound(f"No such image: {ref_or_id}")
        try:
            names = os.listdir(_images_dir(root))
        except FileNotFoundError:
            names = []
        hits = [n[:-5] for n in names if n.endswith(".json") and n.startswith(prefix)]
        if len(hits) != 1:
            which = "ambiguous image id" if hits else "No such image"
            raise ImageNotFound(f"{which}: {ref_or_id}")
        image_id = "sha256:" + hits[0]
    return _info(root, image_id, _read_config(root, image_id), tags)


def layer_dirs(root: str, image_id: str) -> list[str]:
    """Return the image's layer dirs top-most first, the order overlay's lowerdir wants."""
    return dirs_of_layers(root, _parse_config(_read_config(root, image_id)).rootfs.diff_ids)


def dirs_of_layers(root: str, diff_ids: Sequence[str]) -> list[str]:
    """Return the dirs of diff_ids (given bottom-most first, as images list them) top first."""
    dirs = []
    for d in reversed(diff_ids):
        path = os.path.join(_layers_dir(root), d.removeprefix("sha256:"))
        if not _HEX.fullmatch(d.removeprefix("sha256:")) or not os.path.isdir(path):
            raise BadImage(f"layer {d} is not in the store")
        dirs.append(path)
    return dirs


def remove_image(root: str, image_id: str) -> bool:
    """Delete an image, its tags and the layers no other image uses; False if absent."""
    hexpart = _image_hex(image_id)
    image_id = "sha256:" + hexpart
    with _locked(root):
        path = os.path.join(_images_dir(root), hexpart + ".json")
        try:
            with open(path, "rb") as f:
                mine = {d[7:] for d in _parse_config(f.read()).rootfs.diff_ids}
        except FileNotFoundError:
            return False
        others = set().union(*(v for k, v in _referenced(root).items() if k != hexpart))
        if _busy_layers(root) & (mine - others):
            raise ImageInUse(f"image {image_id} has layers in use by a mounted container")
        tags = _read_tags(root)
        if image_id in tags.values():
            kept = {t: i for t, i in tags.items() if i != image_id}
            _write_atomic(_tags_path(root), msgspec.json.encode(kept))
        os.unlink(path)
        _collect(root)
        return True


def prune_layers(root: str) -> list[str]:
    """Delete layers no image references and no mount uses; return their diff ids."""
    with _locked(root):
        return _collect(root)


def _referenced(root: str) -> dict[str, set[str]]:
    """Map each stored image (hex) to the layer hexes its config names."""
    out = {}
    for name in os.listdir(_images_dir(root)):
        if name.endswith(".json") and _HEX.fullmatch(name[:-5]):
            with open(os.path.join(_images_dir(root), name), "rb") as f:
                out[name[:-5]] = {d[7:] for d in _parse_config(f.read()).rootfs.diff_ids}
    return out


def _busy_layers(root: str) -> set[str]:
    layers = _layers_dir(root)
    return {os.path.basename(d) for d in rootfs.lowerdirs_in_use()
            if os.path.dirname(d) == layers}


def _collect(root: str) -> list[str]:
    """Delete unreferenced, unmounted layers and stale temp files (lock held)."""
    layers = _layers_dir(root)
    keep = set().union(*_referenced(root).values()) | _busy_layers(root)
    removed = []
    for name in os.listdir(layers):
        path = os.path.join(layers, name)
        if name.startswith(".tmp-") or name.endswith(".tmp"):
            # Only lock holders write here, and we hold the lock: these are crash leftovers.
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        elif _HEX.fullmatch(name) and name not in keep:
            _remove_layer(layers, name)
            removed.append("sha256:" + name)
        elif name.endswith(".json") and name[:-5] not in keep and not os.path.isdir(path[:-5]):
            with contextlib.suppress(FileNotFoundError):  # gone with its layer just now
                os.unlink(path)
    return removed


def _remove_layer(layers: str, hexpart: str) -> None:
    """Delete one layer; rename first so a crash never leaves a partial layer in place."""
    doomed = os.path.join(layers, f".tmp-gc-{hexpart}")
    os.rename(os.path.join(layers, hexpart), doomed)
    shutil.rmtree(doomed)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(layers, hexpart + ".json"))
