"""The facts the reducer decides, appended to the events stream (tagged, frozen Structs).

Naming: past-tense Subject+Verb. Tags are explicit and never reused. Stored events never
forbid unknown fields, so an old reader survives a newer writer. Values never form
reference cycles, so they are not tracked by the cyclic GC (gc=False): a replay holding a
million of them would otherwise spend most of its time in collections.
"""

from __future__ import annotations

import msgspec

from events.netspecs import NetworkInfo, Networking
from events.specs import (
    ContainerConfig,
    Endpoint,
    ExecConfig,
    HostConfig,
    ImageConfig,
    MountPoint,
    NetworkSpec,
)

__all__ = [
    "CommandRejected",
    "ContainerActionNoted",
    "ContainerCommitted",
    "ContainerCreated",
    "ContainerDestroyed",
    "ContainerDied",
    "ContainerMarkedDead",
    "ContainerOOMKilled",
    "ContainerPaused",
    "ContainerRenamed",
    "ContainerRestarted",
    "ContainerStarted",
    "ContainerStopped",
    "ContainerUnpaused",
    "DriftObserved",
    "EndpointReleased",
    "EndpointReserved",
    "Event",
    "EventMeta",
    "EventRecord",
    "ExecCreated",
    "ExecDied",
    "ContainerUpdated",
    "ExecStarted",
    "FreezeFailed",
    "FreezeRequested",
    "HostBooted",
    "HostJoined",
    "HostLost",
    "HostReturned",
    "ImageActionNoted",
    "ImagePushed",
    "ImageRegistered",
    "ImageRemoved",
    "ImageTagged",
    "LinkAdded",
    "LinkRemoved",
    "NetworkConnected",
    "NetworkCreated",
    "NetworkDefined",
    "NetworkDisconnected",
    "NetworkRemoved",
    "NetworkingConfigured",
    "NetworksPruned",
    "RemovalFailed",
    "RemovalStarted",
    "ReportIgnored",
    "RestartScheduled",
    "RootfsMounted",
    "SandboxCreated",
    "SignalRequested",
    "StartFailed",
    "StartInitiated",
    "NameReleased",
    "NameReserved",
    "VolumeCreated",
    "VolumeMounted",
    "VolumeRemoved",
    "VolumeUnmounted",
]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every event; the tag names the fact."""


class NetworkDefined(_Event, tag="NetworkDefined"):
    network: NetworkSpec


class ImageRegistered(_Event, tag="ImageRegistered"):
    image_id: str
    repo_tags: tuple[str, ...] = ()
    config: ImageConfig = msgspec.field(default_factory=ImageConfig)
    layers: tuple[str, ...] = ()
    size: int = 0
    created: int = 0
    # "" as `docker load` (the content arrived whole), "commit", "pull", "import"
    origin: str = ""
    repo_digests: tuple[str, ...] = ()  # "repo@sha256:<manifest digest>" that name it
    ref: str = ""  # the familiar reference a pull named (Docker's Actor.ID of `pull`)


class ImagePushed(_Event, tag="ImagePushed"):
    """A push sent the image to a registry; `repo_digest` (repo@sha256:...) now names it."""

    image_id: str
    ref: str  # the familiar reference pushed, as Docker's `push` event names it
    repo_digest: str = ""


class ImageActionNoted(_Event, tag="ImageActionNoted"):
    """A Docker image event action that changes no state (`save`, `prune`), with its
    attributes; `image_id` is "" for an action on no single image (prune)."""

    action: str
    image_id: str = ""
    attributes: dict[str, str] = {}


class ImageTagged(_Event, tag="ImageTagged"):
    """A reference now names the image (moved from any image it named before)."""

    image_id: str
    tag: str


class ImageRemoved(_Event, tag="ImageRemoved"):
    image_id: str
    untagged: tuple[str, ...] = ()
    deleted: bool = True


class HostBooted(_Event, tag="HostBooted"):
    """The engine's host booted again (a new kernel boot id): its containers are restored.

    An engine-wide fact, recorded after every container's restore (`previous` empty: the
    first boot the engine saw on this host, with nothing to restore).
    """

    boot_id: str
    previous: str = ""


class ContainerCreated(_Event, tag="ContainerCreated"):
    name: str
    image: str
    image_id: str
    config: ContainerConfig
    host_config: HostConfig
    created: int
    mounts: tuple[MountPoint, ...] = ()  # resolved at create (engine.core.volumes)
    host: str = ""  # the host placed on (engine.core.placement); "": single-host mode


class HostJoined(_Event, tag="HostJoined"):
    """A worker joined as a host (again: its labels and capacity from now on).

    `subnet` is its slice of the default bridge network, allocated at its first join and
    kept for as long as the engine knows the host; `bridge` the device it puts there.
    """

    host: str
    labels: dict[str, str] = {}
    capacity: int = 1
    subnet: str = ""
    bridge: str = ""


class HostLost(_Event, tag="HostLost"):
    """The host's heartbeat lease lapsed: its containers are shown lost until it returns."""

    host: str


class HostReturned(_Event, tag="HostReturned"):
    """A lost host beats (or joins) again: its containers are its own again."""

    host: str


class ContainerRenamed(_Event, tag="ContainerRenamed"):
    old_name: str
    new_name: str


class StartInitiated(_Event, tag="StartInitiated"):
    """A start attempt (generation) begins; the endpoint carries the allocated address."""

    generation: int
    endpoint: Endpoint | None = None
    manual: bool = True
    restart: bool = False


class RootfsMounted(_Event, tag="RootfsMounted"):
    generation: int
    rootfs: str = ""


class SandboxCreated(_Event, tag="SandboxCreated"):
    generation: int
    sandbox_key: str = ""


class NetworkConnected(_Event, tag="NetworkConnected"):
    generation: int
    endpoint: Endpoint


class ContainerStarted(_Event, tag="ContainerStarted"):
    generation: int
    pid: int
    started_at: int


class ContainerRestarted(_Event, tag="ContainerRestarted"):
    generation: int


class StartFailed(_Event, tag="StartFailed"):
    generation: int
    step: str
    error: str
    exit_code: int


class RestartScheduled(_Event, tag="RestartScheduled"):
    """The restart policy will start the container again after a back-off (`restarting`)."""

    generation: int
    delay_ms: int
    restart_count: int
    due: int  # unix ns: the exit's time plus the delay, so replay needs no clock


class SignalRequested(_Event, tag="SignalRequested"):
    """The engine asked the host to deliver a signal (Docker's `kill` event)."""

    generation: int
    signal: int
    purpose: str  # "stop" | "kill" | "remove" | "restart"
    timeout: int | None = None
    # Whether it cancels the restart policy (Docker's ExitOnNext). Records decided before
    # this field existed treated every signal as cancelling: the default keeps their fold.
    cancels_restart: bool = True


class NetworkDisconnected(_Event, tag="NetworkDisconnected"):
    generation: int
    network: str = "bridge"


class ContainerOOMKilled(_Event, tag="ContainerOOMKilled"):
    generation: int


class ContainerDied(_Event, tag="ContainerDied"):
    generation: int
    exit_code: int
    finished_at: int
    oom_killed: bool = False
    error: str = ""


class ContainerStopped(_Event, tag="ContainerStopped"):
    generation: int


class LogCompacted(_Event, tag="LogCompacted"):
    """Commands settled before `cutoff_ms` (unix ms), and their dedupe marks, may go.

    The journal itself is never trimmed: this records who compacted the inbox, and when,
    so an audit can tell a forgotten command id from one never sent.
    """

    cutoff_ms: int
    retain_ms: int


class RestartFailed(_Event, tag="RestartFailed"):
    """A policy restart could not begin (e.g. no free address): the container stops."""

    generation: int
    error: str


class RemovalStarted(_Event, tag="RemovalStarted"):
    force: bool = False
    volumes: bool = False  # rm -v: the anonymous volumes go too


class ContainerMarkedDead(_Event, tag="ContainerMarkedDead"):
    pass


class RemovalFailed(_Event, tag="RemovalFailed"):
    error: str


class ContainerDestroyed(_Event, tag="ContainerDestroyed"):
    name: str


class DriftObserved(_Event, tag="DriftObserved"):
    """The reconciler found a host resource disagreeing with the facts."""

    container_id: str
    resource: str
    detail: str


class CommandRejected(_Event, tag="CommandRejected"):
    """A command the engine refused, with Docker's HTTP status and message.

    `rule` names the admission policy rule that refused it ("" for Docker's own guards).
    """

    command: str
    status: int
    message: str
    rule: str = ""


class ReportIgnored(_Event, tag="ReportIgnored"):
    """A worker report recorded but not applied (late, duplicate or out of order)."""

    report: str
    generation: int
    reason: str


class FreezeRequested(_Event, tag="FreezeRequested"):
    """Pause (`frozen`) or unpause asked: the host freezes or thaws the processes."""

    generation: int
    frozen: bool


class ContainerPaused(_Event, tag="ContainerPaused"):
    generation: int


class ContainerUnpaused(_Event, tag="ContainerUnpaused"):
    generation: int


class FreezeFailed(_Event, tag="FreezeFailed"):
    """The host could not freeze or thaw the container; it stays as it was."""

    generation: int
    frozen: bool
    error: str


class ExecCreated(_Event, tag="ExecCreated"):
    """`docker exec` create (Docker's exec_create)."""

    exec_id: str
    config: ExecConfig


class ExecStarted(_Event, tag="ExecStarted"):
    """Its process is being started on the host (Docker's exec_start)."""

    exec_id: str
    generation: int  # the container run it belongs to
    detach: bool = False


class ExecDied(_Event, tag="ExecDied"):
    """Its process ended (Docker's exec_die)."""

    exec_id: str
    exit_code: int


class ContainerUpdated(_Event, tag="ContainerUpdated"):
    """`docker update`: the HostConfig from now on, kept across restarts (Docker's update).

    `generation` is the run whose live cgroup takes the new limits (0: not running).
    """

    host_config: HostConfig
    generation: int = 0


class ContainerCommitted(_Event, tag="ContainerCommitted"):
    """`docker commit` made an image of the container (Docker's container `commit`)."""

    image_id: str
    image_ref: str = ""  # the reference given, familiar form, or ""
    comment: str = ""


class VolumeCreated(_Event, tag="VolumeCreated"):
    """A volume now exists (Docker's volume `create`); `created` is when it was decided."""

    name: str
    driver: str = "local"
    labels: dict[str, str] = {}
    options: dict[str, str] = {}
    created: int = 0


class VolumeRemoved(_Event, tag="VolumeRemoved"):
    """A volume is gone (Docker's volume `destroy`); its directory goes with it."""

    name: str
    driver: str = "local"


class NameReserved(_Event, tag="NameReserved"):
    """This shard, the name's home, holds `name` for container `holder` of another shard."""

    name: str
    holder: str


class NameReleased(_Event, tag="NameReleased"):
    """The reservation of `name` for `holder` is gone; the name is free in every shard."""

    name: str
    holder: str


class VolumeMounted(_Event, tag="VolumeMounted"):
    """A start mounted the volume (Docker's volume `mount`, before `network connect`)."""

    name: str
    driver: str
    destination: str
    rw: bool
    propagation: str = ""


class VolumeUnmounted(_Event, tag="VolumeUnmounted"):
    """The run that mounted it ended (Docker's volume `unmount`, before `die`)."""

    name: str
    driver: str


class ContainerActionNoted(_Event, tag="ContainerActionNoted"):
    """A Docker event action that changes no state (top, archive-path, extract-to-dir,
    attach, detach, resize, export), with the attributes Docker adds to it."""

    action: str
    attributes: dict[str, str] = {}


# --- user-defined networks, endpoints and legacy links (engine.core.networks) -------

class NetworkCreated(_Event, tag="NetworkCreated"):
    """`docker network create`: a user-defined bridge network (Docker's `create`)."""

    network: NetworkSpec
    info: NetworkInfo


class NetworkRemoved(_Event, tag="NetworkRemoved"):
    """A user-defined network is gone (Docker's `destroy`)."""

    network_id: str
    name: str
    bridge: str = ""  # the device and subnet the host releases
    subnet: str = ""


class NetworksPruned(_Event, tag="NetworksPruned"):
    """`docker network prune` ran (Docker's `prune`); each removal is its own fact."""

    names: tuple[str, ...] = ()


class NetworkingConfigured(_Event, tag="NetworkingConfigured"):
    """The container's networking from now on (create, connect, disconnect)."""

    networking: Networking


class EndpointReserved(_Event, tag="EndpointReserved"):
    """A running container's connect was accepted: the address is held, the host joins it."""

    generation: int
    endpoint: Endpoint


class EndpointReleased(_Event, tag="EndpointReleased"):
    """A reserved endpoint was never joined (the host failed): its address is free again."""

    generation: int
    network: str
    error: str = ""


class LinkAdded(_Event, tag="LinkAdded"):
    """A legacy link `/<parent>/<alias>` -> child (engine-wide, as Docker's link index)."""

    parent: str
    child: str
    alias: str


class LinkRemoved(_Event, tag="LinkRemoved"):
    """A legacy link went (`rm --link`, or the removal of its parent or child)."""

    parent: str
    alias: str


Event = (
    NetworkDefined
    | ImageRegistered
    | ImageTagged
    | ImageRemoved
    | ImagePushed
    | ImageActionNoted
    | HostBooted
    | HostJoined
    | HostLost
    | HostReturned
    | ContainerCreated
    | ContainerRenamed
    | StartInitiated
    | RootfsMounted
    | SandboxCreated
    | NetworkConnected
    | ContainerStarted
    | ContainerRestarted
    | StartFailed
    | RestartScheduled
    | SignalRequested
    | NetworkDisconnected
    | ContainerOOMKilled
    | ContainerDied
    | ContainerStopped
    | RestartFailed
    | LogCompacted
    | RemovalStarted
    | ContainerMarkedDead
    | RemovalFailed
    | ContainerDestroyed
    | DriftObserved
    | CommandRejected
    | ReportIgnored
    | FreezeRequested
    | ContainerPaused
    | ContainerUnpaused
    | FreezeFailed
    | ExecCreated
    | ExecStarted
    | ExecDied
    | ContainerUpdated
    | ContainerCommitted
    | ContainerActionNoted
    | NetworkCreated
    | NetworkRemoved
    | NetworksPruned
    | NetworkingConfigured
    | EndpointReserved
    | EndpointReleased
    | LinkAdded
    | LinkRemoved
    | VolumeCreated
    | VolumeRemoved
    | NameReserved
    | NameReleased
    | VolumeMounted
    | VolumeUnmounted
)


class EventMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Who and what caused an event: kept apart from the payload.

    `version` is the container's version after this event (0 for engine-wide facts).
    `at` is the causing command's issued-at time (unix ns), so replay needs no clock.
    `principal` is who wrote the command, as the reducer authenticated it: the input
    stream it read the command from, which only that principal's Redis user may append
    to ("" in records from before principals). `actor` is who the writer says it acts for.
    """

    container_id: str = ""
    version: int = 0
    command_id: str
    at: int
    principal: str = ""
    actor: str = ""
    reason: str = ""
    correlation_id: str = ""
    schema: int = 1


class EventRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One entry of the events stream: envelope plus payload."""

    meta: EventMeta
    event: Event
