"""Give each container a writable layer and an overlay rootfs, and take them away again.

Layout, derived from the container id alone::

    <root>/containers/<cid>/upper    the container's writes (overlay upperdir)
    <root>/containers/<cid>/work     overlay's scratch dir (same filesystem as upper)
    <root>/containers/<cid>/merged   the mounted rootfs

``ensure_*`` accepts what the host already has when it is ours (same overlay options);
``release_*`` treats "already gone" as success. Mounting uses ``mount(2)`` through ctypes
(no fork/exec of mount(8)); when the lowerdir list does not fit the one page that
``mount(2)`` passes, the new mount API (``fsopen``/``fsconfig`` with ``lowerdir+``, Linux
6.8+) adds the layers one by one.

Exceptions (rooted in :mod:`engine.errors`)::

    Internal (500)
    └── RootfsError       a mount or layer operation failed (carries the OS reason)
    Conflict (409)
    ├── MountConflict     the mount point holds a mount that is not ours
    └── StillMounted      the RW layer cannot go while something is mounted in it
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import Conflict, Internal

__all__ = [
    "MountConflict",
    "MountEntry",
    "RootfsError",
    "StillMounted",
    "container_dir",
    "ensure_mounted",
    "ensure_rw_layer",
    "lowerdirs_in_use",
    "mount_at",
    "mounts",
    "release_mount",
    "release_rw_layer",
]

_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Overlay's option syntax uses these as separators; escaping them is not worth the risk.
_BAD_PATH_CHARS = frozenset(",:\\\n\t ")
_PAGE = os.sysconf("SC_PAGESIZE")
_MNT_DETACH = 2
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


class RootfsError(Internal):
    """Signal a failed rootfs operation."""


class MountConflict(Conflict):
    """Signal a mount point occupied by a mount that is not the one we would make."""


class StillMounted(Conflict):
    """Signal that a container dir cannot be removed because something is mounted in it."""


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, with overlay's layer options picked out."""

    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]

    def option(self, key: str) -> str | None:
        """Return the value of super option key (first occurrence), or None."""
        prefix = key + "="
        for opt in self.super_options:
            if opt.startswith(prefix):
                return opt[len(prefix):]
        return None

    @property
    def lowerdirs(self) -> tuple[str, ...]:
        """Return overlay lower dirs, top-most first, from either option syntax."""
        legacy = self.option("lowerdir")
        if legacy is not None:
            return tuple(legacy.split(":"))
        return tuple(o[len("lowerdir+="):] for o in self.super_options
                     if o.startswith("lowerdir+="))


def _unescape(field: str) -> str:
    """Undo the kernel's octal escaping of spaces, tabs, newlines and backslashes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[MountEntry]:
    """Return the mounts of this process's mount namespace."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            entries.append(MountEntry(
                mount_point=_unescape(fields[4]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=tuple(_unescape(o) for o in fields[sep + 3].split(",")),
            ))
    return entries


def mount_at(path: str) -> MountEntry | None:
    """Return the top-most mount on path, or None when path is not a mount point."""
    path = os.path.realpath(path)
    found = None
    for entry in mounts():
        if entry.mount_point == path:
            found = entry  # later lines are mounted on top of earlier ones
    return found


def lowerdirs_in_use() -> set[str]:
    """Return every directory used as an overlay lower layer by a live mount."""
    return {d for m in mounts() if m.fstype == "overlay" for d in m.lowerdirs}


def container_dir(root: str, cid: str) -> str:
    """Return the directory that holds container cid's RW layer and mount point."""
    if not _CID.fullmatch(cid):
        raise ValueError(f"invalid container id {cid!r}")
    return os.path.join(os.path.realpath(root), "containers", cid)


def ensure_rw_layer(root: str, cid: str) -> str:
    """Create the container's upper, work and merged dirs if missing; return its dir."""
    cdir = container_dir(root, cid)
    os.makedirs(os.path.join(cdir, "upper"), mode=0o755, exist_ok=True)
    os.makedirs(os.path.join(cdir, "work"), mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(cdir, "merged"), mode=0o755, exist_ok=True)
    return cdir


def _check_path(path: str) -> str:
    if not os.path.isabs(path) or _BAD_PATH_CHARS.intersection(path):
        raise RootfsError(f"unusable overlay path {path!r} (must be absolute, no ',: \\')")
    return path


def ensure_mounted(root: str, cid: str, lower_dirs: Sequence[str]) -> str:
    """Mount the overlay rootfs of cid over lower_dirs (top-most first); return merged."""
    cdir = container_dir(root, cid)
    upper, work, merged = (os.path.join(cdir, d) for d in ("upper", "work", "merged"))
    if not os.path.isdir(upper) or not os.path.isdir(work) or not os.path.isdir(merged):
        raise RootfsError(f"container {cid} has no RW layer (ensure_rw_layer first)")
    if not lower_dirs:
        # Overlay needs a lower layer; an image with no layers gets an empty one.
        empty = os.path.join(cdir, "empty")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        lower_dirs = [empty]
    lowers = tuple(_check_path(os.path.realpath(d)) for d in lower_dirs)
    for d in lowers:
        if not os.path.isdir(d):
            raise RootfsError(f"lower layer {d} of container {cid} does not exist")
    _check_path(cdir)

    # A mount on merged shows as a device change; only then read mountinfo (10x the cost).
    current = mount_at(merged) if _is_mount_point(merged) else None
    if current is not None:
        ours = (current.fstype == "overlay" and current.lowerdirs == lowers
                and current.option("upperdir") == upper and current.option("workdir") == work)
        if ours:
            return merged
        raise MountConflict(
            f"{merged} already has a {current.fstype} mount that is not container {cid}'s "
            f"overlay (lowerdir={':'.join(current.lowerdirs)})"
        )
    data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(data) < _PAGE:
        _mount(merged, data)
    else:
        _mount_layered(merged, lowers, upper, work)
    return merged


def _mount(target: str, data: str) -> None:
    """Mount overlay on target with mount(2)."""
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, os.fsencode(data)) != 0:
        err = ctypes.get_errno()
        raise RootfsError(f"mount overlay on {target}: {os.strerror(err)} ({data})")


def _syscall(nr: int, *args: object) -> int:
    ret = int(_libc.syscall(ctypes.c_long(nr), *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _fs_log(fsfd: int) -> str:
    """Drain the kernel's messages about a failed fs context (why a mount was refused)."""
    lines = []
    while True:
        try:
            lines.append(os.read(fsfd, 1024).decode(errors="replace"))
        except OSError:
            return "; ".join(lines)


def _mount_layered(target: str, lowers: Sequence[str], upper: str, work: str) -> None:
    """Mount overlay with the new mount API, one fsconfig call per lower layer."""
    fsfd = -1
    try:
        fsfd = _syscall(_SYS_FSOPEN, b"overlay", ctypes.c_uint(1))  # FSOPEN_CLOEXEC
        opts = [("lowerdir+", d) for d in lowers] + [("upperdir", upper), ("workdir", work)]
        for key, value in opts:
            _syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_SET_STRING),
                     key.encode(), os.fsencode(value), ctypes.c_int(0))
        _syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_CMD_CREATE),
                 None, None, ctypes.c_int(0))
        mfd = _syscall(_SYS_FSMOUNT, ctypes.c_int(fsfd), ctypes.c_uint(1), ctypes.c_uint(0))
        try:
            _syscall(_SYS_MOVE_MOUNT, ctypes.c_int(mfd), b"", ctypes.c_int(_AT_FDCWD),
                     os.fsencode(target), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
        finally:
            os.close(mfd)
    except OSError as e:
        log = _fs_log(fsfd) if fsfd >= 0 else ""
        raise RootfsError(
            f"mount overlay on {target} with {len(lowers)} layers: {e.strerror}"
            + (f" ({log})" if log else "")
        ) from e
    finally:
        if fsfd >= 0:
            os.close(fsfd)


def _is_mount_point(path: str) -> bool:
    """Tell whether something of another device is mounted on path (cheap: two stats)."""
    return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev


def release_mount(root: str, cid: str) -> None:
    """Unmount cid's rootfs; lazily if busy. Not mounted counts as success."""
    merged = os.path.join(container_dir(root, cid), "merged")
    target = os.fsencode(merged)
    # umount2 until the kernel says "not a mount point": that covers stacked mounts and
    # needs no mountinfo read. Bounded so a mount storm cannot spin us forever.
    for _ in range(16):
        if _libc.umount2(target, 0) == 0:
            continue
        err = ctypes.get_errno()
        if err == errno.EBUSY:
            # A process still holds files: detach now, the kernel frees it when they close.
            if _libc.umount2(target, _MNT_DETACH) == 0:
                continue
            err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return  # not (or no longer) a mount point, or no container dir at all
        raise RootfsError(f"unmount {merged}: {os.strerror(err)}")
    raise RootfsError(f"unmount {merged}: still mounted after 16 unmounts")


def release_rw_layer(root: str, cid: str) -> None:
    """Delete cid's container dir; refuse while anything is mounted inside it."""
    cdir = container_dir(root, cid)
    inside = [m.mount_point for m in mounts()
              if m.mount_point == cdir or m.mount_point.startswith(cdir + "/")]
    if inside:
        raise StillMounted(f"container {cid} still has mounts: {', '.join(inside)}")
    # Rename first so a crash mid-delete never leaves a half-deleted dir under the real
    # name (which ensure_rw_layer would then accept as ours).
    doomed = os.path.join(os.path.dirname(cdir), f".gc-{cid}")
    try:
        os.rename(cdir, doomed)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise RootfsError(f"remove {cdir}: {e.strerror}") from e
        shutil.rmtree(doomed)  # left by an earlier crash; clear it and retry once
        os.rename(cdir, doomed)
    if os.path.lexists(doomed):
        shutil.rmtree(doomed)
