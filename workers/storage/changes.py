"""Read a container's overlay upper dir as Docker's changes, and write it as a layer tar.

The upper dir (:func:`workers.storage.rootfs.container_dir` ``/upper``) holds every write,
including overlay's whiteouts: a ``0:0`` character device for a deleted entry, and
``trusted.overlay.opaque=y`` on a directory that hides its lower contents. Both readers
follow moby's overlay driver (``pkg/archive/changes.go`` ``changes`` with
``overlayDeletedFile``, and ``TarWithOptions`` with ``OverlayWhiteoutFormat``), so
``docker diff`` and ``docker commit`` see what Docker would.

The paths Docker keeps in a container's separate init layer (mount points for /proc, /sys,
/dev, the bound /etc files) are left out of both: they belong to the runtime, not the image.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from workers.storage.tarpolicy import OPAQUE, WH

__all__ = ["ADDED", "DELETED", "INIT_PATHS", "MODIFIED", "Change", "read_changes",
           "write_layer"]

MODIFIED, ADDED, DELETED = 0, 1, 2  # Docker's ChangeType (api/types/container/change_types.go)
INIT_PATHS = frozenset({"/dev", "/dev/pts", "/dev/shm", "/dev/console", "/proc", "/sys",
                        "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab",
                        "/.dockerenv", "/.dockerinit"})
# Making a mount point changes its parent's mtime; Docker's init layer hides that too.
_INIT_PARENTS = frozenset(os.path.dirname(p) for p in INIT_PATHS)


@dataclass(frozen=True)
class Change:
    """One entry of ``GET /containers/{id}/changes``."""

    path: str
    kind: int

    def docker(self) -> dict[str, str | int]:
        """Return the entry in Docker's JSON shape."""
        return {"Path": self.path, "Kind": self.kind}


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _walk(upper: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield (container path, host path, lstat) depth first in name order, as Go's Walk."""
    def visit(rel: str) -> Iterator[tuple[str, str, os.stat_result]]:
        host = os.path.join(upper, rel.lstrip("/"))
        for name in sorted(os.listdir(host)):
            path = f"{rel.rstrip('/')}/{name}"
            if path in INIT_PATHS:
                continue
            full = os.path.join(host, name)
            st = os.lstat(full)
            yield path, full, st
            if stat.S_ISDIR(st.st_mode):
                yield from visit(path)
    yield from visit("/")


def _lower_stat(lowers: Sequence[str], path: str) -> os.stat_result | None:
    """Return the stat of path in the top-most lower layer that has it (following, as Go)."""
    for layer in lowers:
        try:
            return os.stat(os.path.join(layer, path.lstrip("/")))
        except OSError:
            continue
    return None


def read_changes(upper: str, lowers: Sequence[str]) -> list[Change]:
    """Return the upper dir's changes against lowers (top-most first), in Docker's order."""
    out: list[Change] = []
    changed_dirs: set[str] = set()
    for path, full, st in _walk(upper):
        is_dir = stat.S_ISDIR(st.st_mode)
        lower = _lower_stat(lowers, path)
        if _is_whiteout(st) or (is_dir and _is_opaque(full) and lower is not None):
            kind = DELETED
        elif lower is None:
            kind = ADDED
        else:
            if (is_dir and stat.S_ISDIR(lower.st_mode) and st.st_mode == lower.st_mode
                    and (path in _INIT_PARENTS or (st.st_size == lower.st_size
                                                   and st.st_mtime_ns == lower.st_mtime_ns))):
                continue  # only the parent of a change: recorded when a child needs it
            kind = MODIFIED
        if is_dir:
            changed_dirs.add(path)
        if kind != MODIFIED:
            # Docker records the parent of an added or deleted entry as modified, once.
            parent = os.path.dirname(path)
            if parent != "/" and parent not in changed_dirs:
                out.append(Change(parent, MODIFIED))
                changed_dirs.add(parent)
        out.append(Change(path, kind))
    return out


def write_layer(upper: str, out: IO[bytes]) -> None:
    """Write the upper dir to out as a layer tar, whiteouts as ``.wh.`` entries."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, full, st in _walk(upper):
            name = path.lstrip("/")
            if _is_whiteout(st):
                head, base = os.path.split(name)
                info = tarfile.TarInfo(os.path.join(head, WH + base))
                info.mtime = int(st.st_mtime)
                tar.addfile(info)
                continue
            info = tar.gettarinfo(full, arcname=name)
            if info is None:
                continue  # a socket: Docker's tar leaves these out too
            if info.isreg():
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if info.isdir() and _is_opaque(full):
                marker = tarfile.TarInfo(os.path.join(name, OPAQUE))
                marker.mtime = int(st.st_mtime)
                tar.addfile(marker)
