"""Decide the control plane's container commands: create, start, stop, kill, restart, rm, rename.

Handlers of `engine.core.decide` with Docker's guards and error texts, and the helpers
the reports' handlers share with them (starting a generation, the back-off state).
"""

from __future__ import annotations

import msgspec

from commands import schema as c
from engine.core import hosts, names, networks
from engine.core.ipam import allocate
from engine.core.joins import check_joins
from engine.core.placement import place
from engine.core.state import Container, World, host_lost
from engine.core.validate import merge_image_config, validate_create
from engine.core.volumes import mount_points
from engine.errors import Conflict, Internal, InvalidParameter, MoorError, NotFound, NotModified
from events import model as e
from events.signals import parse_signal
from events.specs import Endpoint

__all__ = [
    "begin_start", "cancels_restart", "configured_stop_signal", "create", "endpoint_for",
    "in_backoff", "kill", "kill_for_removal", "remove", "rename", "restart", "start", "stop",
]

_SIGKILL = 9
_SIGTERM = 15
_DEFAULT_STOP_TIMEOUT = 10


def create(world: World, env: c.Envelope, cmd: c.CreateContainer) -> tuple[str, list[e.Event]]:
    cid = env.container_id
    if not names.is_full_id(cid):
        raise InvalidParameter(f"invalid container id: {cid!r} (64 lowercase hex expected)")
    if cid in world.containers or cid in world.destroyed:
        raise Conflict(f"container id {cid} is already in use")
    host = cmd.host_config
    mode = host.network_mode or "bridge"
    if mode == "default":
        mode = "bridge"
    policy = msgspec.structs.replace(host.restart_policy, name=host.restart_policy.name or "no")
    host = msgspec.structs.replace(host, network_mode=mode, restart_policy=policy)
    validate_create(world, cmd.config, host)
    networks.check_create(world, host, cmd.networking, cmd.config.hostname,
                          bool(cmd.config.exposed_ports))
    image_id = names.resolve_image(world, cmd.config.image)
    config = merge_image_config(cmd.config, world.images[image_id])
    if not config.hostname and host.uts_mode != "host":  # --uts host: the host's name
        config = msgspec.structs.replace(config, hostname=cid[:12])
    # A generated name can fall back to the short id, which a user may already hold.
    name = (names.valid_name(cmd.name) if cmd.name
            else names.generate_name(cid, names.Held(world), cmd.shards))
    _check_name_free(world, name)
    placed = place(world, config.labels) if world.hosts else ""
    mounts, volumes = mount_points(world, cid, config, host, env.issued_at)
    return cid, [*volumes,
                 e.ContainerCreated(name=name, image=cmd.config.image, image_id=image_id,
                                    config=config, host_config=host, created=env.issued_at,
                                    mounts=mounts, host=placed),
                 *networks.create_events(world, cid, host, cmd.networking)]


def _check_name_free(world: World, name: str) -> None:
    """Raise Docker's name conflict when another container holds the name (here, or in
    another shard through a reservation here)."""
    holder = names.holder_of(world, name)
    if holder is not None:
        raise names.name_conflict(name, holder)


def endpoint_for(world: World, ctr: Container) -> Endpoint | None:
    """Reserve the container's address on its network (None for network modes none, host)."""
    mode = ctr.host_config.network_mode
    if mode in ("none", "host") or mode.startswith("container:"):
        return None
    if networks.is_user_network(world, mode):  # --ip, --ip-range, --mac-address
        return networks.endpoint_on(world, ctr, mode)
    spec = world.networks.get(mode)
    if spec is None:
        raise NotFound(f"network {mode} not found")
    if world.hosts:  # a host's slice; host "" skips every slice
        if ctr.host:
            return allocate(world, hosts.host_network(world, spec, ctr.host), ctr.id)
        return allocate(world, spec, ctr.id, skip=hosts.slice_ranges(world))
    return allocate(world, spec, ctr.id)


def begin_start(world: World, ctr: Container, restart: bool) -> e.StartInitiated:
    """Start the container's next generation on request (a restart's start included)."""
    return e.StartInitiated(generation=ctr.generation + 1, endpoint=endpoint_for(world, ctr),
                            manual=True, restart=restart)


def in_backoff(ctr: Container) -> bool:
    """Tell whether a policy restart is waiting out its back-off: no process, nothing starting."""
    return ctr.restarting and not ctr.saga


def start(world: World, env: c.Envelope, cmd: c.StartContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    hosts.check_reachable(world, ctr)
    if ctr.paused:
        raise Conflict("cannot start a paused container, try unpause instead")
    if ctr.running or ctr.starting:
        raise NotModified("container is already running")
    if ctr.removal_in_progress or ctr.dead:
        raise Conflict("container is marked for removal and cannot be started")
    check_joins(world, ctr)
    networks.check_net_donor(world, ctr)
    networks.check_links(world, ctr)
    return ctr.id, [begin_start(world, ctr, restart=False)]


def _stop_signal(ctr: Container, requested: str) -> int:
    """Return the signal a stop sends: the one asked for, else the container's own."""
    if requested:
        try:
            return parse_signal(requested)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from None
    return configured_stop_signal(ctr) or _SIGTERM


def configured_stop_signal(ctr: Container) -> int | None:
    """Return the container's StopSignal (its own or its image's), None when it has none.

    One that does not parse counts as SIGTERM, as Docker's StopSignal() falls back: an
    image with a bad STOPSIGNAL must not make its containers unstoppable.
    """
    if not ctr.config.stop_signal:
        return None
    try:
        return parse_signal(ctr.config.stop_signal)
    except ValueError:
        return _SIGTERM


def cancels_restart(ctr: Container, sig: int) -> bool:
    """Tell whether a signal sent through the engine cancels the restart policy (§2).

    Docker cancels it ("exit on next") for SIGKILL, for the configured StopSignal, and for
    any signal when none is configured; every signal still marks the container manually
    stopped (which only unless-stopped consults).
    """
    configured = configured_stop_signal(ctr)
    return sig == _SIGKILL or configured is None or sig == configured


def kill_for_removal(ctr: Container) -> e.SignalRequested:
    """Return the SIGKILL of a forced removal (rm -f) of the container's current run."""
    return _signal(ctr, _SIGKILL, "remove")


def _signal(ctr: Container, sig: int, purpose: str, timeout: int | None = None
            ) -> e.SignalRequested:
    return e.SignalRequested(generation=ctr.generation, signal=sig, purpose=purpose,
                             timeout=timeout, cancels_restart=cancels_restart(ctr, sig))


def _stop_timeout(ctr: Container, requested: int | None) -> int:
    if requested is not None:
        return requested
    if ctr.config.stop_timeout is not None:
        return ctr.config.stop_timeout
    return _DEFAULT_STOP_TIMEOUT


def stop(world: World, env: c.Envelope, cmd: c.StopContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    hosts.check_reachable(world, ctr)
    if not (ctr.running or ctr.starting):
        raise NotModified("container is already stopped")
    if in_backoff(ctr):
        return ctr.id, [e.ContainerStopped(generation=ctr.generation)]  # Docker: `stop` only
    return ctr.id, [_signal(ctr, _stop_signal(ctr, cmd.signal), "stop",
                            _stop_timeout(ctr, cmd.timeout))]


def kill(world: World, env: c.Envelope, cmd: c.KillContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    hosts.check_reachable(world, ctr)
    try:
        sig = parse_signal(cmd.signal or "SIGKILL")
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None
    if not (ctr.running or ctr.starting):
        raise Conflict(f"cannot kill container: {cmd.ref}: container {ctr.id} is not running")
    if in_backoff(ctr):
        # Docker delivers no signal in back-off: cancelling the restart stops it.
        return ctr.id, [e.ContainerStopped(generation=ctr.generation)]
    return ctr.id, [_signal(ctr, sig, "kill")]


def restart(world: World, env: c.Envelope, cmd: c.RestartContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    hosts.check_reachable(world, ctr)  # a 409, not the 500 of the failures below
    try:
        if ctr.removal_in_progress or ctr.dead:
            raise Conflict("container is marked for removal and cannot be started")
        if (ctr.running or ctr.starting) and not in_backoff(ctr):
            return ctr.id, [_signal(ctr, _stop_signal(ctr, cmd.signal), "restart",
                                    _stop_timeout(ctr, cmd.timeout))]
        return ctr.id, [begin_start(world, ctr, restart=True)]
    except MoorError as err:
        # Docker loses the class of every restart failure: always a 500.
        raise Internal(f"Cannot restart container {cmd.ref}: {err.message}") from None


def remove(world: World, env: c.Envelope, cmd: c.RemoveContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    if host_lost(world, ctr):
        return ctr.id, _remove_lost(world, ctr, cmd)
    if ctr.removal_in_progress:
        raise Conflict(f"removal of container {cmd.ref} is already in progress")
    if ctr.running or ctr.starting:
        if not cmd.force:
            if ctr.paused:
                raise Conflict(f'cannot remove container "{cmd.ref}": container is paused and '
                               "must be unpaused first")
            state = "restarting" if ctr.restarting else "running"
            raise Conflict(f'cannot remove container "{cmd.ref}": container is {state}: stop '
                           "the container before removing or force remove")
        started = e.RemovalStarted(force=True, volumes=cmd.volumes)
        if in_backoff(ctr):
            return ctr.id, [started, e.ContainerMarkedDead()]
        return ctr.id, [started, kill_for_removal(ctr)]
    return ctr.id, [e.RemovalStarted(force=cmd.force, volumes=cmd.volumes),
                    e.ContainerMarkedDead()]


def _remove_lost(world: World, ctr: Container, cmd: c.RemoveContainer) -> list[e.Event]:
    """Remove a lost host's container without asking the host (nobody there to ask).

    Running needs force, as anywhere. The container is marked dead at once, with no
    signal; the reducer's host watch then drops it from the facts (`DropLostContainer`,
    engine.core.hosts). The host's reconcile releases what it still holds when it returns.
    A removal that was waiting for the host (its kill) is finished the same way.
    """
    if ctr.removal_in_progress and ctr.dead:
        raise Conflict(f"removal of container {cmd.ref} is already in progress")
    if ctr.removal_in_progress:
        return [e.ContainerMarkedDead()]
    if (ctr.running or ctr.starting) and not cmd.force:
        raise Conflict(f'cannot remove container "{cmd.ref}": its host {ctr.host} is lost '
                       "and it may still run there: force remove")
    return [e.RemovalStarted(force=cmd.force, volumes=cmd.volumes), e.ContainerMarkedDead()]


def rename(world: World, env: c.Envelope, cmd: c.RenameContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    if not cmd.new_name:
        raise InvalidParameter("Neither old nor new names may be empty")
    new = names.valid_name(cmd.new_name)
    if new == ctr.name:
        raise InvalidParameter("Renaming a container with the same name as its current name")
    try:
        _check_name_free(world, new)
    except Conflict as err:
        raise Conflict(f"Error when allocating new name: {err.message}") from None
    return ctr.id, [e.ContainerRenamed(old_name=ctr.name, new_name=new)]
