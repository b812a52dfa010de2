"""Named network namespaces: create, classify, open, join and remove them under /run/netns.

Speed (measured on these VMs): pyroute2's `netns.create` and `NetNS(...)` each fork a
child to reach the namespace (~28 ms together before any link work). Here a
short-lived thread does `unshare(CLONE_NEWNET)` / `setns` and opens the netlink socket
inside, then exits (~2-3 ms); network namespaces are per thread, so the caller's own thread
never changes namespace. Opening an existing namespace opens its path read-only: a wrong
name fails with NotFound and never creates a namespace (what `flags=0` guarantees in
pyroute2).

These are primitives: they raise OSError as the kernel reports it, and network.py
translates at its boundary. NotFound and Conflict name the container they were asked for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pyroute2.netlink import NETLINK_ROUTE

from engine.errors import Conflict, NotFound
from workers import nsutil
from workers.net.netconf import NETNS_DIR

__all__ = ["NsState", "create", "ensure_lo_up", "open_netns", "remove", "socket_in", "state"]

T = TypeVar("T")
NsState = Literal["netns", "missing", "placeholder", "other"]

_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _on_thread(fn: Callable[[], T]) -> T:
    """Run fn on a fresh thread, so unshare/setns never moves the caller's thread."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=body, name="moor-netns", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount, as iproute2 does, so the ns bind mounts propagate."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    try:
        nsutil.mount("", NETNS_DIR, "none", nsutil.MS_SHARED | nsutil.MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # Not a mount point yet: bind it onto itself first (iproute2's fallback).
        nsutil.mount(NETNS_DIR, NETNS_DIR, "none", nsutil.MS_BIND | nsutil.MS_REC)
        nsutil.mount("", NETNS_DIR, "none", nsutil.MS_SHARED | nsutil.MS_REC)


def _set_lo_up() -> None:
    """Bring lo up in the calling thread's netns with one ioctl (no netlink round trip)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def state(path: str) -> NsState:
    """Classify path: "netns", "missing", "placeholder" (a plain file) or "other" (nsfs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return "placeholder"  # ENOTTY: not nsfs, what a create that crashed leaves
    finally:
        os.close(fd)
    return "netns" if nstype == nsutil.CLONE_NEWNET else "other"


def create(path: str) -> None:
    """Create a netns bind-mounted at path with lo up; the placeholder is removed on failure.

    Raises FileExistsError if path exists (a concurrent create won the race).
    """
    _share_netns_dir()
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))

    def body() -> None:
        nsutil.unshare(nsutil.CLONE_NEWNET)
        nsutil.mount("/proc/thread-self/ns/net", path, "none", nsutil.MS_BIND)
        _set_lo_up()

    try:
        _on_thread(body)
    except BaseException:
        remove(path)
        raise


def open_netns(path: str, cid: str) -> int:
    """Open an existing namespace read-only (never creates one) and return its fd.

    NotFound if path is missing, Conflict if it is not a network namespace.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network sandbox of container {cid} not found ({path})") from None
    try:
        if fcntl.ioctl(fd, _NS_GET_NSTYPE) != nsutil.CLONE_NEWNET:
            raise OSError(errno.EINVAL, "not a network namespace")
    except OSError:
        os.close(fd)
        raise Conflict(f"{path} is not a network namespace (container {cid})") from None
    return fd


def ensure_lo_up(nsfd: int) -> None:
    """Make sure lo is up inside the namespace nsfd (joined on a throwaway thread)."""
    def body() -> None:
        nsutil.setns(nsfd, nsutil.CLONE_NEWNET)
        _set_lo_up()
    _on_thread(body)


def socket_in(nsfd: int) -> socket.socket:
    """Return a netlink route socket bound to the namespace nsfd (sockets keep their netns)."""
    def body() -> socket.socket:
        nsutil.setns(nsfd, nsutil.CLONE_NEWNET)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return _on_thread(body)


def remove(path: str) -> None:
    """Lazily unmount the namespace at path and delete the name; already gone is success."""
    try:
        nsutil.umount2(path, nsutil.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
