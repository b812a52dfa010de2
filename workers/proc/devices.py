"""Host devices a container gets: `--device` and `--privileged` nodes, and the devices cgroup.

The nodes are resolved on the host before the container's init forks (a missing device is
a start failure with Docker's text); the init then makes them in the container's /dev
(`workers.nsutil.setup_rootfs`). The allow rules (`events.hostopts.device_rules`) are written
to the container's v1 `devices` group before its process joins.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from events.specs import DeviceMapping

__all__ = ["DeviceNode", "apply_rules", "host_devices", "resolve_devices"]

# Not devices a container should get from the host's /dev (Docker's HostDevices skips these).
_SKIP_DIRS = frozenset({"pts", "shm", "mqueue", "fd"})


class DeviceNode(NamedTuple):
    """A device node to make in the container (path inside it, and the host's node)."""

    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int  # permission bits
    uid: int
    gid: int
    perms: str = "rwm"  # what the devices cgroup allows on it


def _node(path: str, target: str) -> DeviceNode | None:
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(target, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                      stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _walk(root: str, target: str) -> list[DeviceNode]:
    """Every device node under a host directory, mapped under target."""
    nodes = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == "/dev":
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            host = os.path.join(dirpath, name)
            if os.path.islink(host):
                continue
            try:
                node = _node(host, os.path.join(target, os.path.relpath(host, root)))
            except OSError:
                continue  # gone meanwhile
            if node is not None:
                nodes.append(node)
    return nodes


def host_devices() -> tuple[DeviceNode, ...]:
    """Every device node of the host's /dev (what `--privileged` gets), sorted by path."""
    return tuple(sorted(_walk("/dev", "/dev")))


def resolve_devices(mappings: tuple[DeviceMapping, ...]) -> tuple[DeviceNode, ...]:
    """Resolve `--device` entries (a directory gives every node under it); OSError with
    Docker's text when one is missing or not a device."""
    nodes: list[DeviceNode] = []
    for m in mappings:
        target = m.path_in_container or m.path_on_host
        try:
            perms = m.cgroup_permissions or "rwm"
            if os.path.isdir(m.path_on_host):
                nodes.extend(n._replace(perms=perms) for n in _walk(m.path_on_host, target))
                continue
            node = _node(m.path_on_host, target)
        except OSError as e:
            raise OSError(e.errno, "error gathering device information while adding custom "
                          f'device "{m.path_on_host}": {(e.strerror or "").lower()}') from None
        if node is None:
            raise OSError(0, "error gathering device information while adding custom device "
                          f'"{m.path_on_host}": not a device node')
        nodes.append(node._replace(perms=perms))
    return tuple(nodes)


def apply_rules(group_dir: str, rules: tuple[str, ...]) -> None:
    """Deny every device, then allow the rules in order, in a v1 `devices` group."""
    if rules == ("a *:* rwm",):
        with open(os.path.join(group_dir, "devices.allow"), "w") as f:
            f.write("a")
        return
    with open(os.path.join(group_dir, "devices.deny"), "w") as f:
        f.write("a")
    for rule in rules:
        with open(os.path.join(group_dir, "devices.allow"), "w") as f:
            f.write(rule)
