"""Keep the image store's files: paths, the writer lock, atomic writes, tags, layer GC.

The layout is described in :mod:`workers.storage.images`. Everything here that writes
expects the writer lock (:func:`locked`) to be held by the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from workers.storage import rootfs
from workers.storage.imageconfig import HEX, parse_config

__all__ = [
    "LayerMeta",
    "busy_layers",
    "collect",
    "has_layer",
    "images_dir",
    "layer_meta",
    "layers_dir",
    "locked",
    "read_tags",
    "referenced",
    "tags_path",
    "write_atomic",
]


class LayerMeta(msgspec.Struct):
    """What the store records beside an extracted layer.

    `blob` is the digest of ``<diff hex>.blob``, the layer's bytes as they arrived (a
    registry's gzip blob, or the tar a load or import read): push and save send them back
    unchanged, so the layer keeps its diff id and the image its id. "" for layers stored
    before blobs were kept.
    """

    size: int
    entries: int
    blob: str = ""
    blob_size: int = 0
    compressed: bool = False  # gzip (what a registry gets); False: the plain tar


def images_dir(root: str) -> str:
    """Return the directory of image configs (named by their hex)."""
    return os.path.join(root, "images", "sha256")


def layers_dir(root: str) -> str:
    """Return the directory of extracted layers, as a real path (mountinfo's lowerdirs are)."""
    return os.path.join(os.path.realpath(root), "layers", "sha256")


def tags_path(root: str) -> str:
    """Return the path of the tags file (tag -> image id)."""
    return os.path.join(root, "images", "repositories.json")


def write_atomic(path: str, data: bytes) -> None:
    """Write data to path so readers see the old or the new file, never a torn one."""
    tmp = f"{path}.tmp"  # only lock holders write, so one fixed temp name is enough
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


@contextmanager
def locked(root: str) -> Iterator[None]:
    """Hold the store's writer lock, creating the store's directories on first use."""
    os.makedirs(images_dir(root), exist_ok=True)
    os.makedirs(layers_dir(root), exist_ok=True)
    fd = os.open(os.path.join(root, "images", ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_tags(root: str) -> dict[str, str]:
    """Return the tags file's map of tag to image id (empty before the first tag)."""
    try:
        with open(tags_path(root), "rb") as f:
            return msgspec.json.decode(f.read(), type=dict[str, str])
    except FileNotFoundError:
        return {}


def has_layer(root: str, diff_id: str) -> bool:
    """Return True if the layer with diff_id is extracted in the store."""
    return os.path.isdir(os.path.join(layers_dir(root), diff_id.removeprefix("sha256:")))


def layer_meta(root: str, diff_id: str) -> LayerMeta:
    """Return what the store recorded of a layer (zeros when its record is missing)."""
    path = os.path.join(layers_dir(root), diff_id.removeprefix("sha256:") + ".json")
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=LayerMeta)
    except FileNotFoundError:
        return LayerMeta(size=0, entries=0)


# --- collection of unused layers --------------------------------------------------------

def referenced(root: str) -> dict[str, set[str]]:
    """Map each stored image (hex) to the layer hexes its config names."""
    out = {}
    for name in os.listdir(images_dir(root)):
        if name.endswith(".json") and HEX.fullmatch(name[:-5]):
            with open(os.path.join(images_dir(root), name), "rb") as f:
                out[name[:-5]] = {d[7:] for d in parse_config(f.read()).rootfs.diff_ids}
    return out


def busy_layers(root: str) -> set[str]:
    """Return the hexes of the store's layers that a mounted overlay uses."""
    layers = layers_dir(root)
    return {os.path.basename(d) for d in rootfs.lowerdirs_in_use()
            if os.path.dirname(d) == layers}


def collect(root: str) -> list[str]:
    """Delete unreferenced, unmounted layers and stale temp files (lock held)."""
    layers = layers_dir(root)
    keep = set().union(*referenced(root).values()) | busy_layers(root)
    removed = []
    for name in os.listdir(layers):
        path = os.path.join(layers, name)
        if name.startswith(".tmp-") or name.endswith(".tmp"):
            # Only lock holders write here, and we hold the lock: these are crash leftovers.
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        elif HEX.fullmatch(name) and name not in keep:
            _remove_layer(layers, name)
            removed.append("sha256:" + name)
        elif (name.endswith((".json", ".blob")) and name[:-5] not in keep
              and not os.path.isdir(path[:-5])):
            with contextlib.suppress(FileNotFoundError):  # gone with its layer just now
                os.unlink(path)
    return removed


def _remove_layer(layers: str, hexpart: str) -> None:
    """Delete one layer; rename first so a crash never leaves a partial layer in place."""
    doomed = os.path.join(layers, f".tmp-gc-{hexpart}")
    os.rename(os.path.join(layers, hexpart), doomed)
    shutil.rmtree(doomed)
    for suffix in (".json", ".blob"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(layers, hexpart + suffix))
