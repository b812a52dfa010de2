"""evolve(world, record) -> world: fold one recorded event into the state, deterministically.

The reducer and every replay use this one function, so the live state and a replay of
the events stream cannot drift. It never raises on an event decide produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec.structs import replace

from engine.core import netfold
from engine.core.ipam import address_key
from engine.core.state import Container, Exec, Host, Image, Volume, World
from events import model as e
from events import saga

__all__ = ["WORLD_EVENTS", "evolve", "fold"]


def evolve(world: World, record: e.EventRecord) -> World:
    """Apply one event to the world (in place) and return it."""
    event = record.event
    meta = record.meta
    world_fn = _WORLD.get(type(event))
    if world_fn is not None:
        world_fn(world, event)
        return world
    if isinstance(event, e.ContainerCreated):
        _created(world, meta, event)
        return world
    ctr = world.containers.get(meta.container_id)
    if ctr is None:
        return world  # a rejection or ignored report about no container: recorded only
    if isinstance(event, e.ContainerDestroyed):
        _destroyed(world, ctr)
        return world
    fn = _CONTAINER.get(type(event))
    changes: dict[str, Any] = fn(world, ctr, event) if fn else {}
    world.containers[ctr.id] = replace(ctr, version=meta.version, **changes)
    return world


def fold(records: Any, world: World | None = None) -> World:
    """Fold an iterable of EventRecords from scratch (or onto `world`)."""
    world = world if world is not None else World()
    for record in records:
        evolve(world, record)
    return world


# --- engine-wide facts ---------------------------------------------------------------

def _network_defined(world: World, ev: e.NetworkDefined) -> None:
    world.networks[ev.network.name] = ev.network


def _move_tag(world: World, tag: str, image_id: str) -> None:
    """Point `tag` at `image_id`, taking it off the image it named before (Docker's tag)."""
    previous = world.tags.get(tag)
    if previous is not None and previous != image_id and previous in world.images:
        old = world.images[previous]
        world.images[previous] = replace(
            old, repo_tags=tuple(t for t in old.repo_tags if t != tag))
    world.tags[tag] = image_id


def _image_registered(world: World, ev: e.ImageRegistered) -> None:
    for tag in ev.repo_tags:
        _move_tag(world, tag, ev.image_id)
    world.images[ev.image_id] = Image(id=ev.image_id, repo_tags=ev.repo_tags, config=ev.config,
                                      layers=ev.layers, size=ev.size, created=ev.created,
                                      repo_digests=ev.repo_digests)


def _image_pushed(world: World, ev: e.ImagePushed) -> None:
    image = world.images.get(ev.image_id)
    if image is not None and ev.repo_digest and ev.repo_digest not in image.repo_digests:
        world.images[ev.image_id] = replace(
            image, repo_digests=(*image.repo_digests, ev.repo_digest))


def _image_tagged(world: World, ev: e.ImageTagged) -> None:
    image = world.images.get(ev.image_id)
    if image is None:
        return
    _move_tag(world, ev.tag, ev.image_id)
    if ev.tag not in image.repo_tags:
        world.images[ev.image_id] = replace(image, repo_tags=(*image.repo_tags, ev.tag))


def _image_removed(world: World, ev: e.ImageRemoved) -> None:
    for tag in ev.untagged:
        if world.tags.get(tag) == ev.image_id:
            del world.tags[tag]
    image = world.images.get(ev.image_id)
    if image is None:
        return
    if ev.deleted:
        del world.images[ev.image_id]
    else:
        world.images[ev.image_id] = replace(
            image, repo_tags=tuple(t for t in image.repo_tags if t not in ev.untagged),
            repo_digests=tuple(d for d in image.repo_digests if d not in ev.untagged))


def _volume_created(world: World, ev: e.VolumeCreated) -> None:
    world.volumes[ev.name] = Volume(name=ev.name, driver=ev.driver, labels=ev.labels,
                                    options=ev.options, created=ev.created)


def _volume_removed(world: World, ev: e.VolumeRemoved) -> None:
    world.volumes.pop(ev.name, None)


def _name_reserved(world: World, ev: e.NameReserved) -> None:
    world.reserved[ev.name] = ev.holder


def _name_released(world: World, ev: e.NameReleased) -> None:
    world.reserved.pop(ev.name, None)


def _host_booted(world: World, ev: e.HostBooted) -> None:
    world.host_boot_id = ev.boot_id


def _host_joined(world: World, ev: e.HostJoined) -> None:
    known = world.hosts.get(ev.host)
    losses = known.losses if known is not None else 0
    world.hosts[ev.host] = Host(id=ev.host, labels=ev.labels, capacity=ev.capacity,
                                subnet=ev.subnet, bridge=ev.bridge, losses=losses)


def _host_lost(world: World, ev: e.HostLost) -> None:
    known = world.hosts.get(ev.host)
    if known is not None:
        world.hosts[ev.host] = replace(known, alive=False, losses=known.losses + 1)


def _host_returned(world: World, ev: e.HostReturned) -> None:
    known = world.hosts.get(ev.host)
    if known is not None:
        world.hosts[ev.host] = replace(known, alive=True)


_WORLD: dict[type, Callable[[World, Any], None]] = {
    e.NetworkDefined: _network_defined,
    e.HostJoined: _host_joined,
    e.HostLost: _host_lost,
    e.HostReturned: _host_returned,
    e.HostBooted: _host_booted,
    e.ImageRegistered: _image_registered,
    e.ImageTagged: _image_tagged,
    e.VolumeCreated: _volume_created,
    e.VolumeRemoved: _volume_removed,
    e.NameReserved: _name_reserved,
    e.NameReleased: _name_released,
    e.ImageRemoved: _image_removed,
    e.ImagePushed: _image_pushed,
    **netfold.WORLD,
}
# The engine-wide facts: the snapshot's world parts are rewritten when one is folded.
WORLD_EVENTS = frozenset(_WORLD)


# --- containers -----------------------------------------------------------------------

def _created(world: World, meta: e.EventMeta, ev: e.ContainerCreated) -> None:
    world.containers[meta.container_id] = Container(
        id=meta.container_id, name=ev.name, image=ev.image, image_id=ev.image_id,
        config=ev.config, host_config=ev.host_config, created=ev.created, version=meta.version,
        mounts=ev.mounts, host=ev.host)
    world.names[ev.name] = meta.container_id


def _destroyed(world: World, ctr: Container) -> None:
    _release_address(world, ctr)
    for exec_id in ctr.execs:
        world.execs.pop(exec_id, None)
    if world.names.get(ctr.name) == ctr.id:
        del world.names[ctr.name]
    del world.containers[ctr.id]
    world.destroyed.add(ctr.id)


def _release_address(world: World, ctr: Container) -> None:
    netfold.release_extra(world, ctr)
    if ctr.endpoint is not None:
        key = address_key(ctr.endpoint.network, ctr.endpoint.ip_address)
        if world.addresses.get(key) == ctr.id:
            del world.addresses[key]


def _renamed(world: World, ctr: Container, ev: e.ContainerRenamed) -> dict[str, Any]:
    if world.names.get(ev.old_name) == ctr.id:
        del world.names[ev.old_name]
    world.names[ev.new_name] = ctr.id
    return {"name": ev.new_name}


def _start_initiated(world: World, ctr: Container, ev: e.StartInitiated) -> dict[str, Any]:
    _release_address(world, ctr)
    if ev.endpoint is not None:
        world.addresses[address_key(ev.endpoint.network, ev.endpoint.ip_address)] = ctr.id
    changes = {"generation": ev.generation,
               "saga": saga.saga_steps(ctr.host_config.network_mode),
               "endpoint": ev.endpoint, "connected": False, "restart_pending": False,
               "restart_attempt": ev.restart, "stop_pending": False, "manually_stopped": False,
               "restart_cancelled": False, "sandbox_key": "", "rootfs": "", "restart_due": 0}
    if ev.manual:
        # A manual start replaces the restart manager: count and back-off start over.
        changes |= {"restart_count": 0, "restart_delay_ms": 0, "running": False,
                    "restarting": False}
    return changes


def _advance(ctr: Container, step: str) -> tuple[str, ...]:
    return ctr.saga[1:] if ctr.saga and ctr.saga[0] == step else ctr.saga


def _rootfs_mounted(world: World, ctr: Container, ev: e.RootfsMounted) -> dict[str, Any]:
    return {"saga": _advance(ctr, saga.MOUNT), "rootfs": ev.rootfs}


def _sandbox_created(world: World, ctr: Container, ev: e.SandboxCreated) -> dict[str, Any]:
    return {"saga": _advance(ctr, saga.SANDBOX), "sandbox_key": ev.sandbox_key}


def _network_connected(world: World, ctr: Container, ev: e.NetworkConnected) -> dict[str, Any]:
    if ev.endpoint.network in ctr.endpoints:  # a live connect, not the start saga's
        return netfold.extra_connected(world, ctr, ev)
    return {"saga": _advance(ctr, saga.ENDPOINT), "endpoint": ev.endpoint, "connected": True}


def _started(world: World, ctr: Container, ev: e.ContainerStarted) -> dict[str, Any]:
    # Docker's SetRunning: clears Error, ExitCode, OOMKilled.
    return {"saga": (), "running": True, "paused": False, "restarting": False, "pid": ev.pid,
            "started_at": ev.started_at, "exit_code": 0, "error": "", "oom_killed": False}


def _restarted(world: World, ctr: Container, ev: e.ContainerRestarted) -> dict[str, Any]:
    return {"restart_attempt": False}


def _start_failed(world: World, ctr: Container, ev: e.StartFailed) -> dict[str, Any]:
    _release_address(world, ctr)
    return {"saga": (), "error": ev.error, "exit_code": ev.exit_code, "endpoint": None,
            "connected": False, "stop_pending": False, "restart_pending": False,
            "restart_attempt": False, "running": False, "restarting": False, "restart_due": 0,
            "sandbox_key": "", "rootfs": "", "endpoints": {}}


def _signal_requested(world: World, ctr: Container, ev: e.SignalRequested) -> dict[str, Any]:
    changes: dict[str, Any] = {"manually_stopped": True}
    if ev.cancels_restart:
        changes["restart_cancelled"] = True
    if ev.purpose == "stop":
        changes["stop_pending"] = True
    elif ev.purpose == "restart":
        changes["restart_pending"] = True
    return changes


def _disconnected(world: World, ctr: Container, ev: e.NetworkDisconnected) -> dict[str, Any]:
    if ev.network in ctr.endpoints:
        return netfold.extra_disconnected(world, ctr, ev)
    return {"connected": False}


def _oom(world: World, ctr: Container, ev: e.ContainerOOMKilled) -> dict[str, Any]:
    return {"oom_killed": True}


def _died(world: World, ctr: Container, ev: e.ContainerDied) -> dict[str, Any]:
    # Docker's SetStopped, then releaseNetwork.
    _release_address(world, ctr)
    return {"running": False, "paused": False, "freezing": False, "restarting": False,
            "pid": 0, "saga": (), "exit_code": ev.exit_code, "finished_at": ev.finished_at,
            "endpoint": None, "connected": False, "sandbox_key": "", "rootfs": "",
            "oom_killed": ctr.oom_killed or ev.oom_killed, "endpoints": {}}


def _restart_failed(world: World, ctr: Container, ev: e.RestartFailed) -> dict[str, Any]:
    return {"running": False, "restarting": False, "restart_due": 0, "error": ev.error}


def _stopped(world: World, ctr: Container, ev: e.ContainerStopped) -> dict[str, Any]:
    if ctr.restarting and not ctr.saga:  # a stop during the back-off cancels the restart
        return {"stop_pending": False, "running": False, "restarting": False,
                "restart_due": 0, "manually_stopped": True, "restart_cancelled": True}
    return {"stop_pending": False}


def _restart_scheduled(world: World, ctr: Container, ev: e.RestartScheduled
                       ) -> dict[str, Any]:
    # Docker's SetRestarting: Running and Restarting, no pid, until the next start.
    return {"running": True, "restarting": True, "pid": 0,
            "restart_count": ev.restart_count, "restart_delay_ms": ev.delay_ms,
            "restart_due": ev.due}


def _removal_started(world: World, ctr: Container, ev: e.RemovalStarted) -> dict[str, Any]:
    return {"removal_in_progress": True, "remove_volumes": ev.volumes}


def _marked_dead(world: World, ctr: Container, ev: e.ContainerMarkedDead) -> dict[str, Any]:
    return {"dead": True, "restart_pending": False, "restart_attempt": False,
            "running": ctr.running and not ctr.restarting, "restarting": False, "restart_due": 0}


def _removal_failed(world: World, ctr: Container, ev: e.RemovalFailed) -> dict[str, Any]:
    return {"removal_in_progress": False, "error": ev.error}


def _freeze_requested(world: World, ctr: Container, ev: e.FreezeRequested) -> dict[str, Any]:
    return {"freezing": True}


def _paused(world: World, ctr: Container, ev: e.ContainerPaused) -> dict[str, Any]:
    return {"paused": True, "freezing": False}


def _unpaused(world: World, ctr: Container, ev: e.ContainerUnpaused) -> dict[str, Any]:
    return {"paused": False, "freezing": False}


def _freeze_failed(world: World, ctr: Container, ev: e.FreezeFailed) -> dict[str, Any]:
    return {"freezing": False}


def _updated(world: World, ctr: Container, ev: e.ContainerUpdated) -> dict[str, Any]:
    return {"host_config": ev.host_config}


def _exec(ctr: Container, exec_id: str, **changes: Any) -> dict[str, Any]:
    record = ctr.execs.get(exec_id)
    if record is None:
        return {}
    return {"execs": {**ctr.execs, exec_id: replace(record, **changes)}}


def _exec_created(world: World, ctr: Container, ev: e.ExecCreated) -> dict[str, Any]:
    world.execs[ev.exec_id] = ctr.id
    return {"execs": {**ctr.execs, ev.exec_id: Exec(id=ev.exec_id, config=ev.config)}}


def _exec_started(world: World, ctr: Container, ev: e.ExecStarted) -> dict[str, Any]:
    return _exec(ctr, ev.exec_id, running=True, started=True, generation=ev.generation)


def _exec_died(world: World, ctr: Container, ev: e.ExecDied) -> dict[str, Any]:
    return _exec(ctr, ev.exec_id, running=False, exit_code=ev.exit_code)


_CONTAINER: dict[type, Callable[[World, Container, Any], dict[str, Any]]] = {
    e.ContainerRenamed: _renamed,
    e.StartInitiated: _start_initiated,
    e.RootfsMounted: _rootfs_mounted,
    e.SandboxCreated: _sandbox_created,
    e.NetworkConnected: _network_connected,
    e.ContainerStarted: _started,
    e.ContainerRestarted: _restarted,
    e.StartFailed: _start_failed,
    e.SignalRequested: _signal_requested,
    e.NetworkDisconnected: _disconnected,
    e.ContainerOOMKilled: _oom,
    e.ContainerDied: _died,
    e.ContainerStopped: _stopped,
    e.RestartFailed: _restart_failed,
    e.RestartScheduled: _restart_scheduled,
    e.RemovalStarted: _removal_started,
    e.ContainerMarkedDead: _marked_dead,
    e.RemovalFailed: _removal_failed,
    e.FreezeRequested: _freeze_requested,
    e.ContainerPaused: _paused,
    e.ContainerUnpaused: _unpaused,
    e.FreezeFailed: _freeze_failed,
    e.ExecCreated: _exec_created,
    e.ExecStarted: _exec_started,
    e.ExecDied: _exec_died,
    e.ContainerUpdated: _updated,
    **netfold.CONTAINER,
}
