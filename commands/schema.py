"""Commands: what somebody asked for (control plane) or observed (worker reports).

Inbound commands forbid unknown fields: a typo is rejected, not silently dropped.
The envelope (ids, time, actor, cause) is kept apart from the payload.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from events import saga
from events.netspecs import EndpointSettings, Networking
from events.runs import ExitStatus
from events.specs import (
    ContainerConfig,
    ExecConfig,
    HostConfig,
    ImageConfig,
    NetworkSpec,
    RestartPolicy,
)

__all__ = [
    "Command",
    "CommitContainer",
    "CompactLog",
    "ConnectNetwork",
    "CreateContainer",
    "CreateNetwork",
    "DisconnectNetwork",
    "PruneNetworks",
    "RemoveLink",
    "RemoveNetwork",
    "ReportNetworkJoined",
    "CreateExec",
    "CreateVolume",
    "DefineNetwork",
    "Envelope",
    "DropLostContainer",
    "JoinHost",
    "MarkHostLost",
    "MarkHostReturned",
    "exit_command_id",
    "KillContainer",
    "NoteContainerAction",
    "PauseContainer",
    "UpdateContainer",
    "RegisterImage",
    "RemoveContainer",
    "RemoveImage",
    "TagImage",
    "RecordImagePush",
    "NoteImageAction",
    "ReleaseName",
    "RemoveVolume",
    "RenameContainer",
    "ReserveName",
    "Report",
    "ReportHostBooted",
    "ReportEndpoint",
    "ReportExecExited",
    "ReportFrozen",
    "ReportMounted",
    "ReportProcessExited",
    "ReportProcessStarted",
    "ReportDrift",
    "ReportRemoved",
    "ReportSandbox",
    "ReportStepFailed",
    "RestartContainer",
    "RestoreContainer",
    "ResumeRestart",
    "restore_command_id",
    "SAGA_REPORTS",
    "SagaReport",
    "StartContainer",
    "StartExec",
    "StopContainer",
    "UnpauseContainer",
    "REPORT_TYPES",
]

SCHEMA_VERSION = 1


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False,
               omit_defaults=True):
    """Who asked, when and why. `container_id` is the target for create and reports."""

    command_id: str
    container_id: str = ""
    issued_at: int
    actor: str = ""
    reason: str = ""
    causation_id: str = ""
    correlation_id: str = ""
    schema: int = SCHEMA_VERSION
    reply: bool = False  # a client blocks on the result: push it to the reply list


class _Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False,
               tag_field="type"):
    """Base of every command."""


# --- control plane ---------------------------------------------------------------

class DefineNetwork(_Command, tag="DefineNetwork"):
    network: NetworkSpec


class RegisterImage(_Command, tag="RegisterImage"):
    image_id: str
    repo_tags: tuple[str, ...] = ()
    config: ImageConfig = msgspec.field(default_factory=ImageConfig)
    layers: tuple[str, ...] = ()
    size: int = 0
    created: int = 0
    origin: str = ""  # "" (load), "pull" or "import": which Docker event records it
    repo_digests: tuple[str, ...] = ()
    source_ref: str = ""  # the familiar reference a pull named


class CommitContainer(RegisterImage, tag="CommitContainer", kw_only=True):
    """`docker commit`'s record: the image this host built from the container's upper dir.

    The image fields are RegisterImage's; `repo_tags` holds the reference given, if any.
    """

    ref: str
    comment: str = ""


class NoteContainerAction(_Command, tag="NoteContainerAction"):
    """A Docker action on a container that changes no state but is an event in Docker
    (`top`, `archive-path`, `extract-to-dir`, `attach`, `detach`, `resize`, `export`):
    recorded so `docker events`, audit and replay show who did it."""

    ref: str
    action: str
    attributes: dict[str, str] = {}


class CreateVolume(_Command, tag="CreateVolume"):
    """`POST /volumes/create` (the client names an anonymous volume)."""

    name: str
    driver: str = ""
    labels: dict[str, str] = {}
    options: dict[str, str] = {}


class RemoveVolume(_Command, tag="RemoveVolume"):
    name: str
    force: bool = False


class ReserveName(_Command, tag="ReserveName"):
    """Hold a container name in its home shard for a container of another shard (a
    rename across shards: engine.shards, docs/decisions/0015-scale-out.md)."""

    name: str
    holder: str  # the container's full id (its shard is in the id)


class ReleaseName(_Command, tag="ReleaseName"):
    """Give back a name reserved for `holder` (its rename failed, or it let it go)."""

    name: str
    holder: str


class RemoveImage(_Command, tag="RemoveImage"):
    ref: str
    force: bool = False


class TagImage(_Command, tag="TagImage"):
    """`docker tag`: `tag` (a normalised reference) now names the image `ref` names."""

    ref: str
    tag: str


class RecordImagePush(_Command, tag="RecordImagePush"):
    """A push of the image `ref` names finished; the registry named it `repo_digest`."""

    ref: str
    pushed: str  # the familiar reference pushed
    repo_digest: str = ""


class NoteImageAction(_Command, tag="NoteImageAction"):
    """An image action that changes no state (`save`, `prune`): recorded so `docker
    events`, audit and replay show it. `ref` "" for an action on no single image."""

    action: str
    ref: str = ""
    attributes: dict[str, str] = {}


class CreateContainer(_Command, tag="CreateContainer"):
    """Create a container; its 64-hex id travels in the envelope (chosen by the client)."""

    config: ContainerConfig
    name: str = ""
    host_config: HostConfig = msgspec.field(default_factory=HostConfig)
    networking: Networking | None = None  # endpoints, DNS, extra hosts, links
    # How many shards the deployment has (engine.shards): a generated name must be homed
    # in the container's own shard. Carried by the command so the decision stays pure.
    shards: int = 1


class StartContainer(_Command, tag="StartContainer"):
    ref: str


class StopContainer(_Command, tag="StopContainer"):
    ref: str
    timeout: int | None = None
    signal: str = ""


class KillContainer(_Command, tag="KillContainer"):
    ref: str
    signal: str = "SIGKILL"


class RestartContainer(_Command, tag="RestartContainer"):
    ref: str
    timeout: int | None = None
    signal: str = ""


class RemoveContainer(_Command, tag="RemoveContainer"):
    ref: str
    force: bool = False
    volumes: bool = False  # rm -v: remove its anonymous volumes too


class RenameContainer(_Command, tag="RenameContainer"):
    ref: str
    new_name: str


# --- worker and supervisor reports (container id in the envelope) -----------------
# A saga report names the start step it completes (`completes`, not on the wire): the
# decider accepts it only while that step is the next one awaited.

class ReportMounted(_Command, tag="ReportMounted"):
    completes: ClassVar[str] = saga.MOUNT
    generation: int
    rootfs: str = ""


class ReportSandbox(_Command, tag="ReportSandbox"):
    completes: ClassVar[str] = saga.SANDBOX
    generation: int
    sandbox_key: str = ""


class ReportEndpoint(_Command, tag="ReportEndpoint"):
    completes: ClassVar[str] = saga.ENDPOINT
    generation: int
    endpoint_id: str = ""


class ReportProcessStarted(_Command, tag="ReportProcessStarted"):
    completes: ClassVar[str] = saga.SPAWN
    generation: int
    pid: int
    started_at: int


class ReportProcessExited(_Command, tag="ReportProcessExited"):
    generation: int
    exit_code: int
    finished_at: int
    oom_killed: bool = False
    pid: int = 0  # the process that exited (0: unknown, or a report from before pids)

    @classmethod
    def of(cls, generation: int, status: ExitStatus) -> ReportProcessExited:
        """Return the report of a run's recorded exit (by its supervisor, or by reconcile)."""
        return cls(generation=generation, exit_code=status.exit_code,
                   finished_at=status.finished_at_ns, oom_killed=status.oom_killed,
                   pid=status.pid)


def exit_command_id(container_id: str, generation: int, pid: int) -> str:
    """Return the command id of one process's exit report, the same from every reporter.

    It names the fact: which container, which start, which process. The supervisor
    reports the exit; reconcile, a signal job or a re-run start report it when the
    supervisor could not. Should several get through, the reducer drops the repeats by
    this id; a report about another process can never be taken for this one.
    """
    return f"exit-{container_id}-{generation}-{pid}"


class ReportStepFailed(_Command, tag="ReportStepFailed"):
    """A side effect failed and its own partial work was undone. step "remove" = cleanup."""

    generation: int
    step: str
    error: str
    exit_code: int = 128


class ReportRemoved(_Command, tag="ReportRemoved"):
    generation: int = 0


class ReportHostBooted(_Command, tag="ReportHostBooted"):
    """This host's kernel booted (`boot_id`, /proc/sys/kernel/random/boot_id) since the
    boot the engine recorded: every container process, mount and namespace is gone.

    The worker appends it at its start once it has restored every container
    (`RestoreContainer`), or alone when no boot was recorded yet (the engine's first on
    this host: nothing to restore). Recording it ends the restore of that boot.
    """

    boot_id: str


class RestoreContainer(_Command, tag="RestoreContainer"):
    """Docker's restore (§5.4) of one container after a host reboot (id in the envelope).

    `generation` is the one the worker saw; the exit fields describe that run's end when
    its process was running at the reboot: the status its supervisor saved, else 255
    (`finished_at` 0: unknown, the command's time is used).
    """

    boot_id: str
    generation: int
    exit_code: int = 255
    finished_at: int = 0
    oom_killed: bool = False
    pid: int = 0


def restore_command_id(boot_id: str, container_id: str) -> str:
    """Return the command id of a container's restore after one boot (repeats are dropped)."""
    return f"restore-{boot_id}-{container_id}"


class JoinHost(_Command, tag="JoinHost"):
    """A worker joins as a host (at every start): its id, labels and capacity.

    `bridge` is the device it puts the default network's slice on.
    """

    host: str
    labels: dict[str, str] = {}
    capacity: int = 1
    bridge: str = ""


class MarkHostLost(_Command, tag="MarkHostLost"):
    """The reducer saw the host's lease lapse (appended by its host watch).

    `losses` is how often the host was lost before: with the host, it makes the command
    id, so a second reducer noticing the same lapse appends a duplicate that is dropped.
    """

    host: str
    losses: int = 0


class MarkHostReturned(_Command, tag="MarkHostReturned"):
    """The reducer saw a lost host's lease again (appended by its host watch)."""

    host: str
    losses: int = 0


class DropLostContainer(_Command, tag="DropLostContainer"):
    """Drop a lost host's container that was removed meanwhile (id in the envelope;
    appended by the reducer's host watch: nobody on the host can report it removed)."""

    generation: int = 0


class ResumeRestart(_Command, tag="ResumeRestart"):
    """The back-off of a policy restart is over (appended by the reducer's timer)."""

    generation: int


class CompactLog(_Command, tag="CompactLog"):
    """Forget settled commands (and their dedupe marks) older than `retain_ms` (`moor compact`).

    The cut-off is the command's own issued-at minus `retain_ms`, so the decision needs no
    clock; the reducer's shell trims after recording the fact.
    """

    retain_ms: int


class ReportDrift(_Command, tag="ReportDrift"):
    """The reconciler found the host disagreeing with the facts (and what it did)."""

    resource: str
    detail: str
    generation: int = 0


class PauseContainer(_Command, tag="PauseContainer"):
    ref: str


class UnpauseContainer(_Command, tag="UnpauseContainer"):
    ref: str


class UpdateContainer(_Command, tag="UpdateContainer"):
    """`docker update`: the resource fields of `resources` that are not 0 or "" change.

    Only Docker's updatable resources are read from `resources` (memory, swap and
    reservation, CPU shares, nano CPUs, period and quota, cpuset, blkio weight).
    `pids_limit` None keeps it (<= 0 unlimited); `restart_policy` None keeps it.
    """

    ref: str
    resources: HostConfig = msgspec.field(default_factory=HostConfig)
    pids_limit: int | None = None
    restart_policy: RestartPolicy | None = None


class CreateExec(_Command, tag="CreateExec"):
    """`docker exec` create: `exec_id` is the client's (64 hex, like container ids)."""

    ref: str
    exec_id: str
    config: ExecConfig


class StartExec(_Command, tag="StartExec"):
    exec_id: str
    detach: bool = False


class ReportFrozen(_Command, tag="ReportFrozen"):
    """The host froze (or thawed) the container's processes, or could not (`error`)."""

    generation: int
    frozen: bool
    error: str = ""


class ReportExecExited(_Command, tag="ReportExecExited"):
    """An exec's process ended with `exit_code` (its exec supervisor reports it)."""

    exec_id: str
    exit_code: int


# --- user-defined networks and links (engine.core.networks) ------------------------

class CreateNetwork(_Command, tag="CreateNetwork"):
    """`docker network create` (bridge driver): `network_id` is the client's 64 hex.

    `subnet` "" asks the engine to pick one; the client may pass `subnet` and set
    `subnet_given` False when it picked a free one itself (IPAM shows it as auto)."""

    name: str
    network_id: str
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    labels: dict[str, str] = {}
    internal: bool = False
    options: dict[str, str] = {}
    subnet_given: bool = True
    # How many shards decide this network (engine.shards): each gives addresses from its
    # own share of it, so two shards' containers never get the same one.
    shards: int = 1


class RemoveNetwork(_Command, tag="RemoveNetwork"):
    network: str  # a name, id or id prefix


class PruneNetworks(_Command, tag="PruneNetworks"):
    """Remove unused user networks; `labels` are Docker's label / label! filters."""

    labels: tuple[str, ...] = ()
    not_labels: tuple[str, ...] = ()
    until: int = 0  # unix ns; 0: no bound


class ConnectNetwork(_Command, tag="ConnectNetwork"):
    ref: str  # the container
    network: str
    settings: EndpointSettings = msgspec.field(default_factory=EndpointSettings)


class DisconnectNetwork(_Command, tag="DisconnectNetwork"):
    ref: str
    network: str
    force: bool = False


class RemoveLink(_Command, tag="RemoveLink"):
    """`docker rm --link /<parent>/<alias>`."""

    name: str


class ReportNetworkJoined(_Command, tag="ReportNetworkJoined"):
    """A live connect's endpoint joined the running container (or failed: `error`)."""

    generation: int
    network: str
    endpoint_id: str = ""
    error: str = ""


Report = (
    ReportMounted
    | ReportSandbox
    | ReportEndpoint
    | ReportProcessStarted
    | ReportProcessExited
    | ReportStepFailed
    | ReportRemoved
    | ReportDrift
    | ReportHostBooted
    | RestoreContainer
    | ReportFrozen
    | ReportExecExited
    | ReportNetworkJoined
    | JoinHost
)

SagaReport = ReportMounted | ReportSandbox | ReportEndpoint | ReportProcessStarted

SAGA_REPORTS: tuple[type[SagaReport], ...] = (
    ReportMounted, ReportSandbox, ReportEndpoint, ReportProcessStarted,
)

REPORT_TYPES: tuple[type, ...] = (
    ReportMounted, ReportSandbox, ReportEndpoint, ReportProcessStarted,
    ReportProcessExited, ReportStepFailed, ReportRemoved, ReportDrift, ReportHostBooted,
    RestoreContainer, ReportFrozen, ReportExecExited, ReportNetworkJoined, JoinHost,
)

Command = (
    DefineNetwork
    | RegisterImage
    | CommitContainer
    | NoteContainerAction
    | CreateVolume
    | RemoveVolume
    | ReserveName
    | ReleaseName
    | RemoveImage
    | TagImage
    | RecordImagePush
    | NoteImageAction
    | CreateContainer
    | StartContainer
    | StopContainer
    | KillContainer
    | RestartContainer
    | RemoveContainer
    | RenameContainer
    | ReportMounted
    | ReportSandbox
    | ReportEndpoint
    | ReportProcessStarted
    | ReportProcessExited
    | ReportStepFailed
    | ReportRemoved
    | ReportDrift
    | ResumeRestart
    | CompactLog
    | ReportHostBooted
    | RestoreContainer
    | PauseContainer
    | UnpauseContainer
    | UpdateContainer
    | CreateExec
    | StartExec
    | ReportFrozen
    | ReportExecExited
    | CreateNetwork
    | RemoveNetwork
    | PruneNetworks
    | ConnectNetwork
    | DisconnectNetwork
    | RemoveLink
    | ReportNetworkJoined
    | JoinHost
    | MarkHostLost
    | MarkHostReturned
    | DropLostContainer
)
