"""The `local` volume driver on this host, and a start's mounts (binds, volumes, tmpfs).

A volume is a directory `<data root>/volumes/<name>/_data`, as Docker's local driver
keeps it. The engine decides which volumes exist (engine.core.volumes); this module only
makes and deletes their directories, copies an image's content into an empty volume on
first use (Docker's copy-up), and turns a start plan's mount points into what the
container's init mounts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable

from events.specs import MountPoint
from workers.nsutil import resolve_in_root
from workers.proc.spec import BindMount

__all__ = [
    "VolumeError",
    "prepare_mounts",
    "release_volume",
    "ensure_volume",
    "volume_data",
    "volumes_root",
]


class VolumeError(Exception):
    """A mount the host cannot provide (a missing `--mount` bind source, a failed copy)."""


def volumes_root(root: str) -> str:
    return os.path.join(os.path.realpath(root), "volumes")


def volume_data(root: str, name: str) -> str:
    """Return the volume's data directory (Docker's Mountpoint)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid volume name {name!r}")
    return os.path.join(volumes_root(root), name, "_data")


def ensure_volume(root: str, name: str) -> str:
    """Create the volume's directory if missing (idempotent); return its data directory."""
    data = volume_data(root, name)
    os.makedirs(data, mode=0o755, exist_ok=True)
    return data


def release_volume(root: str, name: str) -> None:
    """Delete the volume's directory and everything in it (gone already = success)."""
    shutil.rmtree(os.path.dirname(volume_data(root, name)), ignore_errors=True)


def _copy_up(rootfs: str, destination: str, data: str) -> None:
    """Copy the image's content at destination into an empty volume (owners, modes, xattrs
    kept, as Docker's copyExistingContents); a missing or non-directory path copies nothing."""
    source = resolve_in_root(rootfs, destination)
    if not os.path.isdir(source) or os.listdir(data):
        return
    # cp -a keeps ownership, modes, times, links and xattrs: what a copy-up must keep.
    done = subprocess.run(["cp", "-a", "--", source + "/.", data + "/"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise VolumeError(f"copying {destination} into the volume: {done.stderr.strip()}")


def prepare_mounts(root: str, rootfs: str, mounts: Iterable[MountPoint],
                   ) -> tuple[tuple[BindMount, ...], tuple[tuple[str, str], ...]]:
    """Ready a start's mounts on the host; return the binds and tmpfs (path, options).

    Volumes get their directory (and the image's content when empty and asked); `-v`
    bind sources are created when missing, `--mount` ones must exist (Docker's texts).
    """
    binds: list[BindMount] = []
    tmpfs: list[tuple[str, str]] = []
    for mp in mounts:
        if mp.type == "tmpfs":
            tmpfs.append((mp.destination, mp.tmpfs_options))
            continue
        if mp.type == "volume":
            source = ensure_volume(root, mp.name)
            if mp.copy:
                _copy_up(rootfs, mp.destination, source)
        else:
            source = mp.source
            if not os.path.exists(source):
                if not mp.create_source:
                    raise VolumeError('invalid mount config for type "bind": bind source path '
                                      f"does not exist: {source}")
                os.makedirs(source, mode=0o755, exist_ok=True)
        binds.append(BindMount(source=source, target=mp.destination, readonly=not mp.rw,
                               propagation=mp.propagation))
    return tuple(binds), tuple(tmpfs)
