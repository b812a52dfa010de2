"""How much of the host a container shares: namespace modes, devices, sysctls, tmpfs, user.

Pure (standard library only). Create-time validation (`engine.core.validate`), the CLI
and the worker share these rules, so a bad option is refused with Docker's text before
anything runs. Facts and texts are Docker's (docs/docker-semantics-2.md §10.4–10.7;
moby `runconfig/hostconfig_unix.go`, `daemon/daemon_unix.go`, `oci/oci.go`, docker/cli
`opts/opts.go`, runc's `libcontainer/configs/validate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from events.specs import ContainerConfig, DeviceMapping, HostConfig

__all__ = [
    "DEFAULT_DEVICE_RULES", "DEFAULT_SYSCTLS", "MASKED_PATHS", "MAX_ID", "READONLY_PATHS",
    "check_host_options", "container_target", "device_rules", "ipc_shareable",
    "is_namespaced_sysctl", "parse_device", "tmpfs_options",
]

MAX_ID = 2147483647  # uids and gids, as moby/sys/user checks them

# Docker's defaults (moby oci/defaults.go), applied by runc after pivoting; none when
# privileged.
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
# Set in every container with a network namespace of its own (moby daemon/oci_linux.go,
# since 20.10): ping without privileges, and any port bindable by any user.
DEFAULT_SYSCTLS = (("net.ipv4.ping_group_range", "0 2147483647"),
                   ("net.ipv4.ip_unprivileged_port_start", "0"))
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Docker's device cgroup allow-list (moby oci/defaults.go plus runc's AllowedDevices):
# mknod of any node, but read/write only of these.
DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:1 rwm",  # console
    "c 5:2 rwm",  # ptmx
    "c 136:* rwm",  # pts
    "c 10:200 rwm",  # tun
)
_RULE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$")

# docker/cli's ValidateSysctl: these kernel.* keys, and everything under the prefixes.
_IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
    "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})
_IPC_PREFIXES = ("fs.mqueue.",)
_NET_PREFIX = "net."
_UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})

_TMPFS_FLAGS = frozenset({
    "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "sync", "async",
    "dirsync", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime",
    "norelatime", "strictatime", "nostrictatime", "private", "rprivate", "shared", "rshared",
    "slave", "rslave",
})
_TMPFS_DATA = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"})
_TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev", "rprivate")
# The mount(2) flags a tmpfs option sets (linux/mount.h); the others set none.
_MS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "mand": 64,
       "dirsync": 128, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
       "strictatime": 1 << 24}


def container_target(mode: str) -> str:
    """Return the container a `container:<x>` mode names ("" for any other mode)."""
    return mode[len("container:"):] if mode.startswith("container:") else ""


def ipc_shareable(host: HostConfig) -> bool:
    """Tell whether other containers may join this one's IPC namespace (Docker 20.10)."""
    return host.ipc_mode == "shareable"


def is_namespaced_sysctl(key: str) -> bool:
    """Tell whether a sysctl lives in a namespace a container owns (docker/cli's list)."""
    return (key in _IPC_SYSCTLS or key.startswith(_IPC_PREFIXES)
            or key.startswith(_NET_PREFIX))


def _check_modes(host: HostConfig) -> None:
    pid, ipc = host.pid_mode, host.ipc_mode
    if not (pid in ("", "host") or container_target(pid)):
        raise ValueError(f"invalid PID mode: {pid}")
    if not (ipc in ("", "host", "private", "shareable", "none") or container_target(ipc)):
        raise ValueError(f"invalid IPC mode: {ipc}")
    if host.uts_mode not in ("", "host"):
        raise ValueError(f"invalid UTS mode: {host.uts_mode}")
    if host.cgroupns_mode not in ("", "host", "private"):
        raise ValueError(f"invalid cgroup namespace mode: {host.cgroupns_mode}, valid values "
                         "are: 'private', 'host' or empty")
    if host.runtime not in ("", "runc"):
        raise ValueError(f"Unknown runtime specified {host.runtime}")
    if host.isolation not in ("", "default"):
        raise ValueError(f'Invalid isolation: "{host.isolation}" - linux only supports '
                         "'default'")


def _check_sysctls(host: HostConfig) -> None:
    for key in host.sysctls:
        if not is_namespaced_sysctl(key):
            if key in _UTS_SYSCTLS and host.uts_mode != "host":
                raise ValueError(f'sysctl "{key}" is not allowed as it conflicts with the '
                                 'OCI "hostname" field')
            raise ValueError(f"sysctl '{key}={host.sysctls[key]}' is not allowed")
        if key.startswith(_NET_PREFIX) and host.network_mode == "host":
            raise ValueError(f'sysctl "{key}" not allowed in host network namespace')
        if not key.startswith(_NET_PREFIX) and host.ipc_mode == "host":
            raise ValueError(f'sysctl "{key}" is not allowed in the hosts ipc namespace')


def tmpfs_options(options: str) -> tuple[int, str]:
    """Return (mount flags, data) for a `--tmpfs` option string; ValueError with Docker's text.

    Docker's defaults `noexec,nosuid,nodev` come first and a later option wins (so `exec`
    undoes `noexec`); no default size or mode (the kernel's).
    """
    flags: dict[str, None] = dict.fromkeys(_TMPFS_DEFAULTS)
    data: dict[str, str] = {}
    opposite = {"exec": "noexec", "suid": "nosuid", "dev": "nodev", "rw": "ro"}
    opposite.update({v: k for k, v in opposite.items()})
    for opt in filter(None, options.split(",")):
        key, sep, value = opt.partition("=")
        if sep:
            if key not in _TMPFS_DATA:
                raise ValueError(f'invalid tmpfs option ["{key}" "{value}"]')
            data[key] = value
        elif key in _TMPFS_FLAGS:
            flags.pop(opposite.get(key, ""), None)
            flags[key] = None
        else:
            raise ValueError(f'invalid tmpfs option ["{key}"]')
    bits = 0
    for name in flags:
        bits |= _MS.get(name, 0)
    return bits, ",".join(f"{k}={v}" for k, v in data.items())



def _check_tmpfs(host: HostConfig) -> None:
    for path, options in host.tmpfs.items():
        if not path.startswith("/"):
            raise ValueError(f"invalid mount path: '{path}' mount path must be absolute")
        if path.rstrip("/") == "":
            raise ValueError("invalid specification: destination can't be '/'")
        tmpfs_options(options)


def parse_device(spec: str) -> DeviceMapping:
    """Parse `--device host[:container][:perms]` as docker's CLI does."""
    parts = spec.split(":")
    perms = "rwm"
    if len(parts) == 3:
        src, dst, perms = parts
    elif len(parts) == 2:
        src, dst = parts
        if _valid_perms(dst):
            dst, perms = src, dst
    elif len(parts) == 1:
        src = dst = parts[0]
    else:
        raise ValueError(f"invalid device specification: {spec}")
    if not _valid_perms(perms):
        raise ValueError(f"invalid device mode: {perms}")
    if not dst.startswith("/"):
        raise ValueError(f"{dst} is not an absolute path")
    return DeviceMapping(path_on_host=src, path_in_container=dst, cgroup_permissions=perms)


def _valid_perms(perms: str) -> bool:
    return 0 < len(perms) <= 3 and all(p in "rwm" for p in perms) and len(set(perms)) == len(perms)


def _check_devices(host: HostConfig) -> None:
    for device in host.devices:
        if not device.path_on_host.startswith("/"):
            raise ValueError(f"{device.path_on_host} is not an absolute path")
        if device.path_in_container and not device.path_in_container.startswith("/"):
            raise ValueError(f"{device.path_in_container} is not an absolute path")
        if not _valid_perms(device.cgroup_permissions or "rwm"):
            raise ValueError(f"invalid device mode: {device.cgroup_permissions}")
    for rule in host.device_cgroup_rules:
        if not _RULE.match(rule):
            raise ValueError(f"invalid device cgroup rule format: '{rule}'")


def _check_ids(names: Iterable[str]) -> None:
    for name in names:
        if name.isdigit() and int(name) > MAX_ID:
            raise ValueError(f"uids and gids must be in range 0-{MAX_ID}")


def check_host_options(config: ContainerConfig, host: HostConfig) -> None:
    """Raise ValueError with Docker's text for a namespace, device, sysctl, tmpfs or user
    option that cannot be created."""
    _check_modes(host)
    if host.uts_mode == "host" and config.hostname:
        raise ValueError("conflicting options: hostname and the UTS mode")
    _check_sysctls(host)
    _check_tmpfs(host)
    _check_devices(host)
    user, _, group = config.user.partition(":")
    _check_ids((user, group, *host.group_add))


def device_rules(privileged: bool, granted: Iterable[tuple[str, int, int, str]],
                 extra: Iterable[str]) -> tuple[str, ...]:
    """Return the devices cgroup allow rules, in order; ("a *:* rwm",) means no restriction.

    `granted` is each `--device` node as (type "c"/"b", major, minor, permissions), which
    only the host can tell; `extra` the `--device-cgroup-rule`s.
    """
    if privileged:
        return ("a *:* rwm",)
    return (*DEFAULT_DEVICE_RULES,
            *(f"{kind} {major}:{minor} {perms or 'rwm'}" for kind, major, minor, perms in granted),
            *extra)
