"""What a supervisor is given: the process to run, its limits and mounts, where to report.

The worker builds a `ProcessSpec` from the typed `StartPlan` and hands it to
`workers.proc.spawn.spawn`; the supervisor receives the same objects: copied by the fork
when the caller forks it, sent as msgpack when the worker's zygote does
(`workers.proc.zygote`; a spec that would not come back equal is forked by the caller).
"""

from __future__ import annotations

import msgspec

from events.caps import DEFAULT_MASK
from events.specs import DeviceMapping, HostConfig, Ulimit
from workers.proc.seccomp import Program

__all__ = ["BindMount", "ExitReport", "Limits", "ProcessSpec", "limits_for"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """cgroup limits with Docker's meaning (bytes, count, 1e-9 CPUs); None or 0 is unset."""

    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    nano_cpus: int | None = None
    memory_swappiness: int = -1
    memory_reservation: int = 0
    oom_kill_disable: bool = False
    cpu_shares: int = 0
    cpu_period: int = 0
    cpu_quota: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    blkio_weight: int = 0


def limits_for(host: HostConfig) -> Limits:
    """Return a HostConfig's cgroup limits: at start, and again for `docker update`."""
    return Limits(memory=host.memory or None, memory_swap=host.memory_swap or None,
                  pids=host.pids_limit or None, nano_cpus=host.nano_cpus or None,
                  memory_swappiness=host.memory_swappiness,
                  memory_reservation=host.memory_reservation,
                  oom_kill_disable=host.oom_kill_disable, cpu_shares=host.cpu_shares,
                  cpu_period=host.cpu_period, cpu_quota=host.cpu_quota,
                  cpuset_cpus=host.cpuset_cpus, cpuset_mems=host.cpuset_mems,
                  blkio_weight=host.blkio_weight)


class BindMount(msgspec.Struct, frozen=True, kw_only=True):
    """A host path bound into the container (resolv.conf, hosts, volumes)."""

    source: str
    target: str
    readonly: bool = False
    propagation: str = ""  # "" keeps the namespace's (private); else rprivate, rshared, ...


class ExitReport(msgspec.Struct, frozen=True, kw_only=True):
    """Where, and under which envelope, the supervisor reports the exit to the engine.

    Once the process has exited, the supervisor appends a `ReportProcessExited` command
    for `generation` to `stream`, encoded by the one codec, with an envelope naming
    `container_id` and `actor` (issued when the exit is reported) and the command id
    `commands.schema.exit_command_id` gives that process: deterministic, so a retry after
    a lost reply, or reconcile reporting the same exit, is dropped by the reducer.
    `stream` is the reports stream; `credential_file` the worker's Redis credential
    (engine.acl; "" without ACLs), read when the exit is reported, never copied here.
    """

    redis_url: str
    stream: str
    container_id: str
    generation: int
    actor: str = "supervisor"
    credential_file: str = ""


class ProcessSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to run one container process.

    ``netns`` is the path of the network namespace to join; None keeps the
    host's network (network mode host). ``user`` is "uid[:gid]" or names,
    resolved through the rootfs's /etc/passwd and /etc/group. ``capabilities`` is the
    bounding, permitted and effective mask (`events.caps`; bits the kernel lacks are
    ignored); ``no_new_privs`` sets PR_SET_NO_NEW_PRIVS before exec; ``readonly_rootfs``
    remounts the root read-only (its other mounts keep theirs). Without a
    ``report``, the exit is only recorded in the state dir (exit.json).
    """

    container_id: str
    rootfs: str
    argv: tuple[str, ...]
    state_dir: str
    log_path: str
    env: tuple[str, ...] = ()
    working_dir: str = "/"
    user: str = ""
    hostname: str = ""
    netns: str | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    mounts: tuple[BindMount, ...] = ()
    report: ExitReport | None = None
    generation: int = 0  # the start this run belongs to: recorded in exit.json
    capabilities: int = DEFAULT_MASK
    no_new_privs: bool = False
    readonly_rootfs: bool = False
    # --privileged: every host device, /sys writable, no masked or read-only paths.
    privileged: bool = False
    devices: tuple[DeviceMapping, ...] = ()  # --device: nodes made in the container's /dev
    device_rules: tuple[str, ...] = ()  # --device-cgroup-rule, after Docker's allow-list
    group_add: tuple[str, ...] = ()  # supplementary groups, names or ids (/etc/group)
    # json-file options (events.logopts): -1 never rotates; the none driver discards.
    log_discard: bool = False
    log_max_size: int = -1
    log_max_file: int = 1
    log_attrs: dict[str, str] = {}
    tmpfs: tuple[tuple[str, str], ...] = ()  # (container path, options) per --tmpfs
    sysctls: tuple[tuple[str, str], ...] = ()  # written in the container's namespaces
    # Namespaces shared rather than new: "" new, "host" the host's, or a donor's
    # /proc/<pid>/ns/<kind> to enter.
    pid_ns: str = ""
    ipc_ns: str = ""
    shm: str = ""  # /dev/shm: "" private, "none", or a host tmpfs to bind (shared IPC)
    uts_host: bool = False
    cgroupns_private: bool = False
    init: bool = False  # --init: tini as PID 1, the command its child
    seccomp: Program | None = None  # the compiled filter; None: unconfined
    ulimits: tuple[Ulimit, ...] = ()  # setrlimit in the container's init
    shm_size: int = 0  # the private /dev/shm's bytes; 0: Docker's 64 MiB
    # Config.Tty: PID 1's stdio is a pty whose master the supervisor holds.
    tty: bool = False
    # Config.OpenStdin: the supervisor keeps PID 1's stdin (a pipe, or the pty) for
    # attachers; StdinOnce: the first attacher's end of input closes it (without a TTY).
    open_stdin: bool = False
    stdin_once: bool = False
    # Where the supervisor serves attach (workers.proc.hub); "" serves none.
    attach_socket: str = ""
