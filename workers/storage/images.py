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
import fcntl
import hashlib
import os
import platform
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from engine.core.names import normalize_image_ref
from engine.errors import Conflict, InvalidParameter, MoorError, NotFound
from workers.storage import rootfs, tarsafe

__all__ = [
    "BadImage",
    "ImageConfig",
    "ImageInUse",
    "ImageInfo",
    "ImageNotFound",
    "InvalidReference",
    "StoreWriter",
    "config_diff_ids",
    "created_ns",
    "dirs_of_layers",
    "docker_config",
    "get_image",
    "has_layer",
    "host_arch",
    "import_rootfs",
    "layer_dirs",
    "list_images",
    "prune_layers",
    "remove_image",
    "valid_tag",
    "writing",
]

_HEX = re.compile(r"[0-9a-f]{64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ImageNotFound(NotFound):
    """Signal a reference or id that names no stored image."""


class InvalidReference(InvalidParameter):
    """Signal an image reference Docker would refuse."""


class BadImage(InvalidParameter):
    """Signal an archive or config that is not a loadable image."""


class ImageInUse(Conflict):
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


# --- references and times ----------------------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)")


def valid_tag(ref: str) -> str:
    """Return ref as a tag in the engine's normal form, or raise if Docker would refuse it.

    Tags come from untrusted archives too, so the grammar is checked here; the normal form
    itself ("busybox" -> "busybox:latest") is the engine's, so both agree on every tag.
    """
    if "@" in ref:
        raise InvalidReference(f"invalid reference format: a tag cannot be a digest: {ref!r}")
    name, tag = ref, "latest"
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    domain, _, path = name.partition("/")
    # Docker treats the first component as a registry only if it looks like a host.
    if not (path and ("." in domain or ":" in domain or domain == "localhost")):
        domain, path = "", name
    if path.lower() != path:
        raise InvalidReference(
            f"invalid reference format: repository name must be lowercase: {ref!r}")
    if (not _TAG.fullmatch(tag) or not _PATH.fullmatch(path) or len(name) > 255
            or (domain and not _DOMAIN.fullmatch(domain))):
        raise InvalidReference(f"invalid reference format: {ref!r}")
    return normalize_image_ref(ref)


def created_ns(info: ImageInfo) -> int:
    """Return the image's RFC 3339 ``created`` as unix nanoseconds (ImageRegistered.created).

    0 when absent, unparseable or before the epoch: Go's zero time (0001-01-01), which some
    builders write, means "unknown", as does the event's default.
    """
    m = _RFC3339.fullmatch(info.created.strip())
    if m is None:
        return 0
    day, clock, fraction, zone = m.groups()
    try:
        when = datetime.fromisoformat(f"{day}T{clock}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:  # e.g. month 13 or a leap second
        return 0
    # Whole seconds and the fraction apart: a float would lose the nanoseconds.
    ns = (when - _EPOCH) // timedelta(seconds=1) * 1_000_000_000
    ns += int((fraction or "0")[:9].ljust(9, "0"))
    return max(ns, 0)

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


# --- writing ------------------------------------------------------------------------------

def has_layer(root: str, diff_id: str) -> bool:
    """Return True if the layer with diff_id is extracted in the store."""
    return os.path.isdir(os.path.join(_layers_dir(root), diff_id.removeprefix("sha256:")))


def config_diff_ids(config_raw: bytes) -> list[str]:
    """Return the diff ids an image config names, bottom-most first; BadImage if invalid."""
    return list(_parse_config(config_raw).rootfs.diff_ids)


def host_arch() -> str:
    """Return this host's architecture in OCI's words ("amd64", "arm64", ...)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


class StoreWriter:
    """Add layers and images to a store whose writer lock is held; made by :func:`writing`."""

    def __init__(self, root: str) -> None:
        self.root = root

    def has_layer(self, diff_id: str) -> bool:
        """Return True if the layer with diff_id is extracted in the store."""
        return has_layer(self.root, diff_id)

    def add_layer(self, stream: Any, *, expect_diff_id: str | None = None,
                  expect_blob_digest: str | None = None) -> str:
        """Extract a layer (a binary stream or a path) into the store; return its diff id."""
        parent = _layers_dir(self.root)
        staged = tarsafe.stage_layer(stream, parent, expect_diff_id=expect_diff_id)
        if expect_blob_digest is not None and staged.info.blob_digest != expect_blob_digest:
            tarsafe.discard(staged)
            raise BadImage(f"layer blob digest is {staged.info.blob_digest}, "
                           f"expected {expect_blob_digest}")
        hexpart = staged.info.diff_id.removeprefix("sha256:")
        # Metadata first: a layer dir under its final name is always complete and described.
        meta = msgspec.json.encode(_LayerMeta(size=staged.info.size,
                                              entries=staged.info.entries))
        _write_atomic(os.path.join(parent, hexpart + ".json"), meta)
        tarsafe.commit(staged, os.path.join(parent, hexpart))
        return staged.info.diff_id

    def add_image(self, config_raw: bytes, tags: Sequence[str]) -> ImageInfo:
        """Record a config whose layers are all present and point tags at it."""
        wanted = {valid_tag(t) for t in tags}
        for d in config_diff_ids(config_raw):
            if not has_layer(self.root, d):
                raise BadImage(f"image config names layer {d}, which is not in the store")
        hexpart = hashlib.sha256(config_raw).hexdigest()
        image_id = "sha256:" + hexpart
        path = os.path.join(_images_dir(self.root), hexpart + ".json")
        if not os.path.exists(path):
            _write_atomic(path, config_raw)
        current = _read_tags(self.root)
        if any(current.get(t) != image_id for t in wanted):
            # A tag moves to the new image, as in Docker; the old image stays, untagged.
            current.update({t: image_id for t in wanted})
            _write_atomic(_tags_path(self.root),
                          msgspec.json.encode(dict(sorted(current.items()))))
        return _info(self.root, image_id, config_raw, current)


@contextmanager
def writing(root: str) -> Iterator[StoreWriter]:
    """Hold the writer lock; if the write fails, collect the layers it left unreferenced."""
    with _locked(root):
        try:
            yield StoreWriter(root)
        except BaseException:
            try:
                _collect(root)
            except (OSError, MoorError):
                pass  # the original error matters more; the next prune retries
            raise


def import_rootfs(root: str, tar_path: str, ref: str | None = None, *,
                  config: ImageConfig | None = None, created: str | None = None,
                  comment: str = "") -> ImageInfo:
    """Make a one-layer image from a rootfs tarball, like ``docker import``."""
    tags = [valid_tag(ref)] if ref else []
    when = created or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with writing(root) as store:
        diff_id = store.add_layer(tar_path)
        doc = {
            "architecture": host_arch(),
            "config": docker_config(config or ImageConfig()),
            "created": when,
            "history": [{"created": when, "comment": comment or "Imported from tarball"}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        return store.add_image(msgspec.json.encode(doc), tags)


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
    return sorted(out, key=created_ns, reverse=True)


def get_image(root: str, ref_or_id: str) -> ImageInfo:
    """Return the image named by a tag, a full id or a unique id prefix."""
    tags = _read_tags(root)
    image_id = None
    if not ref_or_id.startswith("sha256:"):
        image_id = tags.get(normalize_image_ref(ref_or_id))
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
