"""The engine's state: containers (immutable records) inside a World of indexes.

A `Container` is a frozen Struct replaced on every change. The `World` is the fold's
accumulator: `evolve` updates it in place (copying the indexes on every event would make
replay O(containers) per event), and nothing else ever mutates it.
"""

from __future__ import annotations

import msgspec

from events.netspecs import NetworkInfo, Networking
from events.specs import (
    ANONYMOUS_LABEL,
    ContainerConfig,
    Endpoint,
    ExecConfig,
    HostConfig,
    ImageConfig,
    MountPoint,
    NetworkSpec,
)

__all__ = ["ANONYMOUS_LABEL", "Container", "Exec", "Host", "Image", "Volume", "World",
           "host_lost", "status_of"]


class Exec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """An exec instance of a container (Docker's ExecConfig record)."""

    id: str
    config: ExecConfig
    running: bool = False
    started: bool = False  # started once: an exec runs at most once
    exit_code: int | None = None
    generation: int = 0  # the container run it started in


class Container(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A container's record, shaped after Docker's container + State."""

    id: str
    name: str
    image: str
    image_id: str
    config: ContainerConfig
    host_config: HostConfig
    created: int
    version: int = 0
    # Docker's State flags
    running: bool = False
    paused: bool = False
    restarting: bool = False
    oom_killed: bool = False
    removal_in_progress: bool = False
    dead: bool = False
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: int = 0
    finished_at: int = 0
    restart_count: int = 0
    manually_stopped: bool = False  # a signal was sent through the engine (unless-stopped)
    restart_cancelled: bool = False  # a cancelling signal was sent (every policy)
    restart_delay_ms: int = 0  # the restart policy's current back-off (0: none yet)
    restart_due: int = 0  # when the back-off ends (unix ns); 0 when none is pending
    # the current start attempt (saga) and what is owed to it
    generation: int = 0
    saga: tuple[str, ...] = ()  # steps still awaited, in order (events.saga); () = none
    restart_pending: bool = False  # a manual restart was asked: start again after the exit
    restart_attempt: bool = False  # this start is a restart: record ContainerRestarted
    stop_pending: bool = False  # a stop was asked: record ContainerStopped at the exit
    endpoint: Endpoint | None = None  # reserved at StartInitiated, released at the exit
    connected: bool = False  # the endpoint joined (Docker's `network connect` happened)
    sandbox_key: str = ""
    rootfs: str = ""
    freezing: bool = False  # a pause or unpause is in flight on the host
    execs: dict[str, Exec] = {}  # exec id -> its record, until the container goes
    networking: Networking = msgspec.field(default_factory=Networking)  # engine.core.networks
    endpoints: dict[str, Endpoint] = {}  # networks joined beyond the primary, by name
    mounts: tuple[MountPoint, ...] = ()  # resolved at create (engine.core.volumes)
    remove_volumes: bool = False  # rm -v: its anonymous volumes go with it
    host: str = ""  # the host it was placed on at create, for life ("": single-host mode)

    @property
    def starting(self) -> bool:
        return bool(self.saga)


class Image(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """An image known to the engine (its content lives on the host)."""

    id: str
    repo_tags: tuple[str, ...] = ()
    config: ImageConfig = msgspec.field(default_factory=ImageConfig)
    layers: tuple[str, ...] = ()
    size: int = 0
    created: int = 0
    repo_digests: tuple[str, ...] = ()  # "repo@sha256:..." from pulls and pushes


class Volume(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A volume known to the engine (its directory lives on the host, under the data root).

    Not omit_defaults: msgspec omits a str default by identity, so a decoded "local"
    would show where a decided one does not, and the fold's copies would differ.
    """

    name: str
    driver: str = "local"
    labels: dict[str, str] = {}
    options: dict[str, str] = {}
    created: int = 0

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS_LABEL in self.labels


class Host(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A worker host the engine knows (HostJoined), for as long as the engine lives.

    Not omit_defaults, as Volume: a decoded record must compare equal to a decided one.
    """

    id: str
    labels: dict[str, str] = {}
    capacity: int = 1
    subnet: str = ""  # its slice of the default bridge network ("" if none was defined)
    bridge: str = ""  # the device its slice lives on
    alive: bool = True  # False from HostLost until HostReturned
    losses: int = 0  # how many times it was lost (the host watch's command ids)


class World(msgspec.Struct, kw_only=True):
    """Everything the decider reads; rebuilt exactly by folding the events stream."""

    containers: dict[str, Container] = {}
    names: dict[str, str] = {}  # name (no slash) -> container id
    images: dict[str, Image] = {}
    tags: dict[str, str] = {}  # "repo:tag" -> image id
    networks: dict[str, NetworkSpec] = {}
    network_info: dict[str, NetworkInfo] = {}  # user-defined networks' records, by name
    links: dict[str, str] = {}  # "<parent id>/<alias>" -> child id (legacy links)
    addresses: dict[str, str] = {}  # "network/ip" -> container id
    destroyed: set[str] = set()  # removed ids stay terminal
    execs: dict[str, str] = {}  # exec id -> container id (derived, as names are)
    host_boot_id: str = ""  # the host's kernel boot id last restored after (HostBooted)
    volumes: dict[str, Volume] = {}
    hosts: dict[str, Host] = {}  # host id -> its record (engine.core.hosts)
    # Names this shard (their home) holds for containers of other shards: name -> holder
    # id (engine.shards; empty with one shard).
    reserved: dict[str, str] = {}

    def snapshot(self) -> dict[str, object]:
        """Return a comparable plain copy (tests and replay --verify)."""
        return msgspec.to_builtins(self, order="sorted")


def host_lost(world: World, c: Container) -> bool:
    """Tell whether the container's host is lost (its lease lapsed: HostLost)."""
    if not c.host:
        return False
    host = world.hosts.get(c.host)
    return host is not None and not host.alive


def status_of(c: Container, lost: bool = False) -> str:
    """Return Docker's State.Status string with Docker's precedence.

    The one home of that precedence: `ps`'s human Status text formats what this returns.
    `lost` (host_lost): the container's host is lost, which Docker has no state for:
    "lost", or "removing" once an rm -f took it out of the host's hands.
    """
    if lost:
        return "removing" if c.removal_in_progress or c.dead else "lost"
    if c.running:
        if c.paused:
            return "paused"
        if c.restarting:
            return "restarting"
        return "running"
    if c.removal_in_progress:
        return "removing"
    if c.dead:
        return "dead"
    if c.started_at == 0:
        return "created"
    return "exited"
