"""Volumes as Docker shows them: the Volume JSON, list filters, prune candidates, and a
container's `Mounts`. Pure: the data root (where the local driver keeps volumes) is given.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from engine.core.state import Volume, World
from engine.core.volumes import users_of
from engine.errors import InvalidParameter, NotFound
from events.specs import MountPoint
from projections.views.filters import Filters, check_keys, fuzzy_match, match_kv
from projections.views.points import rfc3339_nano

__all__ = [
    "VOLUME_FILTERS",
    "find_volume",
    "list_volumes",
    "mounts_doc",
    "prune_volume_candidates",
    "volume_doc",
    "volume_path",
]

VOLUME_FILTERS = ("dangling", "driver", "label", "name")
_PRUNE_FILTERS = ("all", "label", "label!")
_TRUE = ("1", "true", "True")


def volume_path(data_root: str, name: str) -> str:
    """The local driver's data directory of a volume (Docker's Mountpoint); `data_root`
    as the workers resolve it (a real path)."""
    return posixpath.join(data_root, "volumes", name, "_data")


def volume_doc(vol: Volume, data_root: str) -> dict[str, Any]:
    return {"CreatedAt": rfc3339_nano(vol.created - vol.created % 1_000_000_000),
            "Driver": vol.driver, "Labels": dict(vol.labels) or None,
            "Mountpoint": volume_path(data_root, vol.name), "Name": vol.name,
            "Options": dict(vol.options) or None, "Scope": "local"}


def find_volume(world: World, name: str) -> Volume:
    vol = world.volumes.get(name)
    if vol is None:
        raise NotFound(f"get {name}: no such volume")
    return vol


def list_volumes(world: World, filters: Filters) -> list[Volume]:
    """`GET /volumes` with Docker's filters (dangling, driver, label, name)."""
    check_keys(filters, VOLUME_FILTERS)
    chosen = []
    for name in sorted(world.volumes):
        vol = world.volumes[name]
        if filters.get("dangling"):
            dangling = filters["dangling"][0] in _TRUE
            if dangling == bool(users_of(world, name)):
                continue
        if filters.get("driver") and vol.driver not in filters["driver"]:
            continue
        if filters.get("label") and not match_kv(filters["label"], vol.labels):
            continue
        if filters.get("name") and not fuzzy_match(filters["name"], name):
            continue
        chosen.append(vol)
    return chosen


def prune_volume_candidates(world: World, filters: Filters) -> list[Volume]:
    """Docker's prune (API >= 1.42): unused local volumes without driver options, only
    the anonymous ones unless `all=true`; `label`, `label!`."""
    check_keys(filters, _PRUNE_FILTERS)
    every = filters.get("all", [])
    if len(every) > 1:
        raise InvalidParameter(f"invalid filter 'all={every[1]}': only one value is expected")
    everything = bool(every) and every[0] in _TRUE
    chosen = []
    for name in sorted(world.volumes):
        vol = world.volumes[name]
        if vol.driver != "local" or vol.options or users_of(world, name):
            continue
        if not (everything or vol.anonymous):
            continue
        if filters.get("label") and not match_kv(filters["label"], vol.labels):
            continue
        if filters.get("label!") and match_kv(filters["label!"], vol.labels):
            continue
        chosen.append(vol)
    return chosen


def mounts_doc(mounts: Iterable[MountPoint], data_root: str) -> list[dict[str, Any]]:
    """A container's `Mounts` in inspect (`--tmpfs` entries are not in it, as in Docker)."""
    docs = []
    for mp in mounts:
        doc: dict[str, Any] = {"Type": mp.type}
        if mp.type == "volume":
            doc |= {"Name": mp.name, "Source": volume_path(data_root, mp.name)}
        else:
            doc["Source"] = mp.source
        doc["Destination"] = mp.destination
        if mp.type == "volume":
            doc["Driver"] = mp.driver
        doc |= {"Mode": mp.mode, "RW": mp.rw, "Propagation": mp.propagation}
        docs.append(doc)
    return docs
