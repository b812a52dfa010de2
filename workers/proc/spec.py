"""What a supervisor is given: the process to run, its limits and mounts, where to report.

The worker builds a `ProcessSpec` from the typed `StartPlan` and hands it to
`workers.proc.spawn.spawn`; the supervisor it forks receives the same objects (a fork
copies them: nothing is encoded on the way).
"""

from __future__ import annotations

import msgspec

from events.caps import DEFAULT_MASK
from events.specs import DeviceMapping
from workers.proc.seccomp import Program

__all__ = ["BindMount", "ExitReport", "Limits", "ProcessSpec"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """cgroup limits with Docker's meaning (bytes, count, 1e-9 CPUs)."""

    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    nano_cpus: int | None = None


class BindMount(msgspec.Struct, frozen=True, kw_only=True):
    """A host path bound into the container (resolv.conf, hosts, volumes)."""

    source: str
    target: str
    readonly: bool = False


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
