"""Map a create body's mounts (Binds, Mounts, VolumesFrom, Config.Volumes) onto the specs,
and check on this host what only the host can tell (a `--mount` bind source exists).

The rules on the values themselves are the engine's (engine.core.volumes), so `moor run`
and the API refuse the same things with the same texts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidParameter
from events.specs import HostConfig, Mount
from moor.api.jsonshape import json_object, string_list

__all__ = ["check_bind_sources", "config_volumes", "host_mounts", "mount_from_api"]


def mount_from_api(doc: Any) -> Mount:
    """One HostConfig.Mounts entry (Docker's mount.Mount JSON)."""
    doc = json_object(doc, "HostConfig.Mounts entry")
    bind = json_object(doc.get("BindOptions"), "BindOptions")
    volume = json_object(doc.get("VolumeOptions"), "VolumeOptions")
    tmpfs = json_object(doc.get("TmpfsOptions"), "TmpfsOptions")
    kind = doc.get("Type") or ""
    for options, allowed in ((bind, "bind"), (volume, "volume"), (tmpfs, "tmpfs")):
        if options and kind != allowed:
            field = {"bind": "BindOptions", "volume": "VolumeOptions",
                     "tmpfs": "TmpfsOptions"}[allowed]
            raise InvalidParameter(f'invalid mount config for type "{kind}": field {field} '
                                   "must not be specified")
    driver = json_object(volume.get("DriverConfig"), "DriverConfig")
    return Mount(type=kind, source=doc.get("Source") or "", target=doc.get("Target") or "",
                 read_only=bool(doc.get("ReadOnly")),
                 propagation=bind.get("Propagation") or "",
                 no_copy=bool(volume.get("NoCopy")),
                 labels={str(k): str(v) for k, v in
                         json_object(volume.get("Labels"), "VolumeOptions.Labels").items()},
                 driver=driver.get("Name") or "",
                 tmpfs_size=int(tmpfs.get("SizeBytes") or 0),
                 tmpfs_mode=int(tmpfs.get("Mode") or 0))


def config_volumes(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Config.Volumes: `{"/path": {}}`, the anonymous volumes `-v /path` asks for."""
    return tuple(json_object(body.get("Volumes"), "Volumes"))


def host_mounts(host: Mapping[str, Any]) -> dict[str, Any]:
    """The HostConfig fields for Binds, Mounts and VolumesFrom."""
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise InvalidParameter("invalid JSON: HostConfig.Mounts must be a list")
    return {"binds": string_list(host.get("Binds"), "HostConfig.Binds"),
            "mounts": tuple(mount_from_api(m) for m in mounts),
            "volumes_from": string_list(host.get("VolumesFrom"), "HostConfig.VolumesFrom")}


def check_bind_sources(host: HostConfig) -> None:
    """`--mount type=bind` never creates its source (unlike `-v`): refuse a missing one."""
    for m in host.mounts:
        if m.type == "bind" and m.source.startswith("/") and not os.path.exists(m.source):
            raise InvalidParameter('invalid mount config for type "bind": bind source path '
                                   f"does not exist: {m.source}")
