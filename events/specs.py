"""Value types shared by commands and events: container, host and image configuration.

Field names follow Docker's Config/HostConfig in snake_case. Schema-evolution rules
(msgspec): new fields get defaults, a field's type never changes, a tag is never reused.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ANONYMOUS_LABEL",
    "DEFAULT_SHM_SIZE",
    "ContainerConfig",
    "DeviceMapping",
    "Endpoint",
    "ExecConfig",
    "HostConfig",
    "ImageConfig",
    "LogConfig",
    "Mount",
    "MountPoint",
    "NetworkSpec",
    "PortBinding",
    "RestartPolicy",
    "Ulimit",
]


DEFAULT_SHM_SIZE = 64 * 1024 * 1024  # Docker's ShmSize when unset
ANONYMOUS_LABEL = "com.docker.volume.anonymous"  # Docker's mark of an anonymous volume


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Docker's HostConfig.RestartPolicy."""

    name: str = "no"
    maximum_retry_count: int = 0


class PortBinding(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One host side of a published port (Docker's PortBinding)."""

    host_ip: str = ""
    host_port: str = ""


class DeviceMapping(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A host device made available in the container (Docker's DeviceMapping, `--device`)."""

    path_on_host: str
    path_in_container: str = ""
    cgroup_permissions: str = "rwm"


class Ulimit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One process resource limit set in the container's init (Docker's Ulimit, `--ulimit`)."""

    name: str  # without RLIMIT_, lower case: "nofile"
    soft: int
    hard: int


class Mount(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One entry of Docker's HostConfig.Mounts (`--mount`), as given."""

    type: str  # bind, volume, tmpfs (the docker CLI's default, volume, is set by the CLI)
    source: str = ""  # host path (bind) or volume name ("" anonymous)
    target: str = ""
    read_only: bool = False
    propagation: str = ""  # bind: BindOptions.Propagation
    no_copy: bool = False  # volume: VolumeOptions.NoCopy
    labels: dict[str, str] = {}  # volume: VolumeOptions.Labels
    driver: str = ""  # volume: VolumeOptions.DriverConfig.Name
    tmpfs_size: int = 0  # tmpfs: TmpfsOptions.SizeBytes
    tmpfs_mode: int = 0  # tmpfs: TmpfsOptions.Mode


class MountPoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A mount the container gets, resolved at create (Docker's MountPoint).

    `source` is the host path for a bind, "" for a volume (its path is the driver's) and
    for tmpfs. `copy` asks for the image's content to be copied into an empty volume.
    """

    type: str  # bind, volume, tmpfs
    destination: str
    name: str = ""  # the volume's
    source: str = ""
    driver: str = ""  # "local" for volumes
    mode: str = ""  # Docker's Mode string as shown by inspect ("ro", "z", ...)
    rw: bool = True
    propagation: str = ""
    copy: bool = False
    create_source: bool = False  # `-v` binds: a missing host path is made at start
    tmpfs_options: str = ""  # tmpfs: mount data ("size=...,mode=...")


class LogConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Docker's HostConfig.LogConfig: the log driver and its options (`--log-opt`).

    Schema evolution: the default (json-file, no options) is what every container
    created before this field existed ran with, so old records decode to it; new
    options go into ``config`` as Docker's strings, never as new typed fields.
    """

    type: str = "json-file"
    config: dict[str, str] = {}


class ContainerConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Docker's container Config: what to run and how (image defaults merged at create)."""

    image: str
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    stop_timeout: int | None = None
    hostname: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()  # Config.Volumes: anonymous volumes (`-v /path`, VOLUME)
    tty: bool = False
    open_stdin: bool = False  # -i: stdin stays open for attachers
    stdin_once: bool = False  # the first attacher's end of input closes stdin
    attach_stdin: bool = False  # what the creating client attached (Docker records it)
    attach_stdout: bool = False
    attach_stderr: bool = False


class HostConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Docker's HostConfig subset moorage supports."""

    network_mode: str = "bridge"
    port_bindings: dict[str, tuple[PortBinding, ...]] = {}
    restart_policy: RestartPolicy = msgspec.field(default_factory=RestartPolicy)
    auto_remove: bool = False
    memory: int = 0
    pids_limit: int = 0
    nano_cpus: int = 0
    cap_add: tuple[str, ...] = ()  # as given (the CLI normalises): events.caps combines them
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    readonly_rootfs: bool = False  # --read-only
    privileged: bool = False
    tmpfs: dict[str, str] = {}  # container path -> mount options (--tmpfs)
    sysctls: dict[str, str] = {}
    devices: tuple[DeviceMapping, ...] = ()
    device_cgroup_rules: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    pid_mode: str = ""  # "" (private), "host", "container:<id>"
    ipc_mode: str = ""  # "" (private), "private", "shareable", "host", "none", "container:<id>"
    uts_mode: str = ""  # "" (private), "host"
    cgroupns_mode: str = ""  # "" (engine default), "host", "private"
    init: bool = False  # --init: tini as PID 1
    runtime: str = ""  # "" or "runc"
    isolation: str = ""  # "" or "default"
    # Resources (Docker's meaning; 0 or "" is unset, as `docker update` reads them).
    memory_swap: int = 0  # memory+swap bytes, -1 unlimited; unset: twice the memory
    memory_swappiness: int = -1  # -1: the kernel's (Docker's null)
    memory_reservation: int = 0
    oom_kill_disable: bool = False
    cpu_shares: int = 0
    cpu_period: int = 0  # CFS, microseconds
    cpu_quota: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    blkio_weight: int = 0
    ulimits: tuple[Ulimit, ...] = ()
    shm_size: int = 0  # /dev/shm bytes; unset: Docker's 64 MiB
    log_config: LogConfig = msgspec.field(default_factory=LogConfig)
    binds: tuple[str, ...] = ()  # `-v src:dst[:mode]` as given (Docker's HostConfig.Binds)
    mounts: tuple[Mount, ...] = ()  # `--mount`
    volumes_from: tuple[str, ...] = ()  # `--volumes-from ctr[:ro|rw]`


class ExecConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Docker's exec create body: a process to run inside a running container."""

    cmd: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str = ""  # "" runs as the container's user
    working_dir: str = ""  # "" runs in the container's working directory
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    privileged: bool = False
    detach_keys: str = ""


class ImageConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The parts of an image's config that shape a container (Docker's image Config)."""

    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""
    user: str = ""
    labels: dict[str, str] = {}
    volumes: tuple[str, ...] = ()  # VOLUME: anonymous volumes at these paths


class NetworkSpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A bridge network the engine allocates addresses in."""

    name: str
    subnet: str
    gateway: str
    bridge: str


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A container's attachment to a network; the address is chosen by the reducer."""

    network: str
    ip_address: str
    prefix_len: int
    gateway: str
    mac_address: str = ""
    endpoint_id: str = ""
