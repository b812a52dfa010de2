"""decide(world, envelope, command) -> events: Docker's lifecycle guards, pure.

No I/O, no clock, no randomness: ids and times come in the envelope, so the same
command on the same world always yields the same events. A refused command yields one
`CommandRejected` carrying Docker's status and text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import msgspec

from commands import schema as c
from engine.core import names
from engine.core.ipam import allocate
from engine.core.state import Container, World
from engine.core.validate import merge_image_config, validate_create
from engine.errors import Conflict, Internal, InvalidParameter, MoorError, NotFound, NotModified
from events import model as e
from events.signals import parse_signal
from events.specs import Endpoint

__all__ = ["decide"]

_HEX = frozenset("0123456789abcdef")
_SIGKILL = 9
_SIGTERM = 15
_DEFAULT_STOP_TIMEOUT = 10
_STEP_OF_REPORT = {
    c.ReportMounted: "mount",
    c.ReportSandbox: "sandbox",
    c.ReportEndpoint: "endpoint",
    c.ReportProcessStarted: "spawn",
}

Events = list[e.Event]


def decide(world: World, env: c.Envelope, cmd: c.Command) -> tuple[str, Events]:
    """Return (container id, events) for a command; rejections are events too."""
    handler = _HANDLERS[type(cmd)]
    try:
        return handler(world, env, cmd)
    except MoorError as err:
        target = _target_id(world, env, cmd)
        rejected = e.CommandRejected(
            command=type(cmd).__name__, status=err.status, message=err.message
        )
        return target, [rejected]


def _target_id(world: World, env: c.Envelope, cmd: c.Command) -> str:
    """Attach a rejection to the container it concerned, when there is one."""
    ref = getattr(cmd, "ref", None)
    if ref is not None and not isinstance(cmd, c.RemoveImage):
        try:
            return names.resolve(world, ref).id
        except MoorError:
            return ""
    return env.container_id if env.container_id in world.containers else ""


# --- engine-wide facts ---------------------------------------------------------------

def _define_network(world: World, env: c.Envelope, cmd: c.DefineNetwork) -> tuple[str, Events]:
    spec = cmd.network
    try:
        net = ipaddress.IPv4Network(spec.subnet)
        gateway = ipaddress.IPv4Address(spec.gateway)
    except ValueError as exc:
        raise InvalidParameter(f"invalid network config: {exc}") from None
    if gateway not in net or net.prefixlen > 30:
        raise InvalidParameter(f"invalid network config: gateway {gateway} not usable in {net}")
    existing = world.networks.get(spec.name)
    if existing == spec:
        raise NotModified(f"network {spec.name} is already defined")
    if existing is not None:
        raise Conflict(f"network with name {spec.name} already exists")
    return "", [e.NetworkDefined(network=spec)]


def _register_image(world: World, env: c.Envelope, cmd: c.RegisterImage) -> tuple[str, Events]:
    hexpart = cmd.image_id[7:]
    if not cmd.image_id.startswith("sha256:") or len(hexpart) != 64 or set(hexpart) - _HEX:
        raise InvalidParameter(f"invalid image id: {cmd.image_id}")
    tags = tuple(dict.fromkeys(names.normalize_image_ref(t) for t in cmd.repo_tags))
    known = world.images.get(cmd.image_id)
    if known is not None:
        tags = tuple(dict.fromkeys((*known.repo_tags, *tags)))
    return "", [e.ImageRegistered(image_id=cmd.image_id, repo_tags=tags, config=cmd.config,
                                  layers=cmd.layers, size=cmd.size, created=cmd.created)]


def _remove_image(world: World, env: c.Envelope, cmd: c.RemoveImage) -> tuple[str, Events]:
    image_id = names.resolve_image(world, cmd.ref)
    image = world.images[image_id]
    tag = names.normalize_image_ref(cmd.ref)
    if tag in image.repo_tags and len(image.repo_tags) > 1:
        return "", [e.ImageRemoved(image_id=image_id, untagged=(tag,), deleted=False)]
    # Sorted, so the container named in the message never depends on dict order.
    users = sorted((x for x in world.containers.values() if x.image_id == image_id),
                   key=lambda x: (x.created, x.id))
    short = image_id[7:19]
    if users and tag in image.repo_tags:
        # By reference, Docker refuses untagging a used image unless forced.
        if not cmd.force:
            raise Conflict(f'conflict: unable to remove repository reference "{cmd.ref}" '
                           f"(must force) - container {users[0].id[:12]} is using its "
                           f"referenced image {short}")
        return "", [e.ImageRemoved(image_id=image_id, untagged=(tag,), deleted=False)]
    running = [x for x in users if x.running or x.starting]
    if running:
        raise Conflict(f"conflict: unable to delete {short} (cannot be forced) - image is "
                       f"being used by running container {running[0].id[:12]}")
    if users and not cmd.force:
        raise Conflict(f"conflict: unable to delete {short} (must be forced) - image is "
                       f"being used by stopped container {users[0].id[:12]}")
    return "", [e.ImageRemoved(image_id=image_id, untagged=image.repo_tags, deleted=not users)]


# --- container lifecycle -------------------------------------------------------------

def _create(world: World, env: c.Envelope, cmd: c.CreateContainer) -> tuple[str, Events]:
    cid = env.container_id
    if len(cid) != 64 or set(cid) - _HEX:
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
    image_id = names.resolve_image(world, cmd.config.image)
    config = merge_image_config(cmd.config, world.images[image_id])
    if not config.hostname:
        config = msgspec.structs.replace(config, hostname=cid[:12])
    # A generated name can fall back to the short id, which a user may already hold.
    name = names.valid_name(cmd.name) if cmd.name else names.generate_name(cid, world.names)
    _check_name_free(world, name)
    return cid, [e.ContainerCreated(name=name, image=cmd.config.image, image_id=image_id,
                                    config=config, host_config=host, created=env.issued_at)]


def _check_name_free(world: World, name: str) -> None:
    """Raise Docker's name conflict when another container holds the name."""
    holder = world.names.get(name)
    if holder is not None:
        raise Conflict(
            f'Conflict. The container name "/{name}" is already in use by container '
            f'"{holder}". You have to remove (or rename) that container to be able to '
            "reuse that name."
        )


def _endpoint_for(world: World, ctr: Container) -> Endpoint | None:
    mode = ctr.host_config.network_mode
    if mode in ("none", "host"):
        return None
    spec = world.networks.get(mode)
    if spec is None:
        raise NotFound(f"network {mode} not found")
    return allocate(world, spec, ctr.id)


def _begin_start(world: World, ctr: Container, restart: bool) -> e.StartInitiated:
    return e.StartInitiated(generation=ctr.generation + 1, endpoint=_endpoint_for(world, ctr),
                            manual=True, restart=restart)


def _start(world: World, env: c.Envelope, cmd: c.StartContainer) -> tuple[str, Events]:
    ctr = names.resolve(world, cmd.ref)
    if ctr.paused:
        raise Conflict("cannot start a paused container, try unpause instead")
    if ctr.running or ctr.starting:
        raise NotModified("container is already running")
    if ctr.removal_in_progress or ctr.dead:
        raise Conflict("container is marked for removal and cannot be started")
    return ctr.id, [_begin_start(world, ctr, restart=False)]


def _stop_signal(ctr: Container, requested: str) -> int:
    try:
        return parse_signal(requested or ctr.config.stop_signal or _SIGTERM)
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None


def _stop_timeout(ctr: Container, requested: int | None) -> int:
    if requested is not None:
        return requested
    if ctr.config.stop_timeout is not None:
        return ctr.config.stop_timeout
    return _DEFAULT_STOP_TIMEOUT


def _in_backoff(ctr: Container) -> bool:
    """A policy restart is waiting out its back-off: no process, nothing starting yet."""
    return ctr.restarting and not ctr.saga


def _stop(world: World, env: c.Envelope, cmd: c.StopContainer) -> tuple[str, Events]:
    ctr = names.resolve(world, cmd.ref)
    if not (ctr.running or ctr.starting):
        raise NotModified("container is already stopped")
    if _in_backoff(ctr):
        return ctr.id, [e.ContainerStopped(generation=ctr.generation)]  # Docker: `stop` only
    return ctr.id, [e.SignalRequested(generation=ctr.generation,
                                      signal=_stop_signal(ctr, cmd.signal), purpose="stop",
                                      timeout=_stop_timeout(ctr, cmd.timeout))]


def _kill(world: World, env: c.Envelope, cmd: c.KillContainer) -> tuple[str, Events]:
    ctr = names.resolve(world, cmd.ref)
    try:
        sig = parse_signal(cmd.signal or "SIGKILL")
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None
    if not (ctr.running or ctr.starting):
        raise Conflict(f"cannot kill container: {cmd.ref}: container {ctr.id} is not running")
    if _in_backoff(ctr):
        # Docker delivers no signal in back-off: cancelling the restart stops it.
        return ctr.id, [e.ContainerStopped(generation=ctr.generation)]
    return ctr.id, [e.SignalRequested(generation=ctr.generation, signal=sig, purpose="kill")]


def _restart(world: World, env: c.Envelope, cmd: c.RestartContainer) -> tuple[str, Events]:
    ctr = names.resolve(world, cmd.ref)
    try:
        if ctr.removal_in_progress or ctr.dead:
            raise Conflict("container is marked for removal and cannot be started")
        if (ctr.running or ctr.starting) and not _in_backoff(ctr):
            return ctr.id, [e.SignalRequested(
                generation=ctr.generation, signal=_stop_signal(ctr, cmd.signal),
                purpose="restart", timeout=_stop_timeout(ctr, cmd.timeout))]
        return ctr.id, [_begin_start(world, ctr, restart=True)]
    except MoorError as err:
        # Docker loses the class of every restart failure: always a 500.
        raise Internal(f"Cannot restart container {cmd.ref}: {err.message}") from None


def _remove(world: World, env: c.Envelope, cmd: c.RemoveContainer) -> tuple[str, Events]:
    ctr = names.resolve(world, cmd.ref)
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
        if _in_backoff(ctr):
            return ctr.id, [e.RemovalStarted(force=True), e.ContainerMarkedDead()]
        return ctr.id, [e.RemovalStarted(force=True),
                        e.SignalRequested(generation=ctr.generation, signal=_SIGKILL,
                                          purpose="remove")]
    return ctr.id, [e.RemovalStarted(force=cmd.force), e.ContainerMarkedDead()]


def _rename(world: World, env: c.Envelope, cmd: c.RenameContainer) -> tuple[str, Events]:
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


# --- reports from workers and supervisors --------------------------------------------

def _ignored(cmd: Any, reason: str) -> e.ReportIgnored:
    return e.ReportIgnored(report=type(cmd).__name__, generation=cmd.generation, reason=reason)


def _report_container(world: World, env: c.Envelope) -> Container | None:
    return world.containers.get(env.container_id)


def _saga_report(world: World, env: c.Envelope, cmd: Any) -> tuple[str, Events]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [_ignored(cmd, "no such container")]
    step = _STEP_OF_REPORT[type(cmd)]
    if cmd.generation != ctr.generation:
        return ctr.id, [_ignored(cmd, f"stale generation (current {ctr.generation})")]
    if not ctr.saga or ctr.saga[0] != step:
        return ctr.id, [_ignored(cmd, f"step {step} not awaited")]
    if isinstance(cmd, c.ReportMounted):
        return ctr.id, [e.RootfsMounted(generation=cmd.generation, rootfs=cmd.rootfs)]
    if isinstance(cmd, c.ReportSandbox):
        return ctr.id, [e.SandboxCreated(generation=cmd.generation, sandbox_key=cmd.sandbox_key)]
    if isinstance(cmd, c.ReportEndpoint):
        assert ctr.endpoint is not None  # the bridge saga always reserves one
        endpoint = msgspec.structs.replace(ctr.endpoint, endpoint_id=cmd.endpoint_id)
        return ctr.id, [e.NetworkConnected(generation=cmd.generation, endpoint=endpoint)]
    return ctr.id, _started(ctr, cmd.pid, cmd.started_at)


def _started(ctr: Container, pid: int, started_at: int) -> Events:
    events: Events = [e.ContainerStarted(generation=ctr.generation, pid=pid,
                                         started_at=started_at)]
    if ctr.restart_attempt:
        events.append(e.ContainerRestarted(generation=ctr.generation))
    return events


def _exited(world: World, env: c.Envelope, cmd: c.ReportProcessExited) -> tuple[str, Events]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [_ignored(cmd, "no such container")]
    if cmd.generation != ctr.generation:
        return ctr.id, [_ignored(cmd, f"stale generation (current {ctr.generation})")]
    events: Events = []
    restart_pending = ctr.restart_pending  # asked before this exit: start again after it
    started_at = ctr.started_at
    if ctr.saga or not ctr.running:
        if ctr.saga != ("spawn",):
            return ctr.id, [_ignored(cmd, "process not running")]
        # The exit overtook the worker's start report: the process did run.
        events.extend(_started(ctr, 0, cmd.finished_at))
        started_at = cmd.finished_at
    g = cmd.generation
    if cmd.oom_killed:
        events.append(e.ContainerOOMKilled(generation=g))
    if ctr.connected and ctr.endpoint is not None:
        events.append(e.NetworkDisconnected(generation=g, network=ctr.endpoint.network))
    events.append(e.ContainerDied(generation=g, exit_code=cmd.exit_code,
                                  finished_at=cmd.finished_at, oom_killed=cmd.oom_killed))
    if ctr.stop_pending or restart_pending:
        events.append(e.ContainerStopped(generation=g))
    if ctr.removal_in_progress:
        events.append(e.ContainerMarkedDead())
    elif restart_pending:
        events.append(_begin_start(world, ctr, restart=True))
    elif ctr.host_config.auto_remove:
        events.extend((e.RemovalStarted(force=True), e.ContainerMarkedDead()))
    else:
        scheduled = _policy_restart(ctr, cmd, started_at)
        if scheduled is not None:
            events.append(scheduled)
    return ctr.id, events


_BACKOFF_FIRST_MS = 100
_BACKOFF_MAX_MS = 60_000
_BACKOFF_RESET_NS = 10 * 1_000_000_000


def _policy_restart(ctr: Container, cmd: c.ReportProcessExited,
                    started_at: int) -> e.RestartScheduled | None:
    """Apply the restart policy to an exit (Docker's restart manager, §5)."""
    policy = ctr.host_config.restart_policy
    if policy.name in ("", "no") or ctr.manually_stopped:
        return None  # any signal sent through the engine cancels the manager, as in Docker
    if policy.name == "on-failure" and (cmd.exit_code == 0 or (
            policy.maximum_retry_count and ctr.restart_count >= policy.maximum_retry_count)):
        return None
    ran = cmd.finished_at - started_at
    if ctr.restart_delay_ms == 0 or ran >= _BACKOFF_RESET_NS:
        delay = _BACKOFF_FIRST_MS
    else:
        delay = min(ctr.restart_delay_ms * 2, _BACKOFF_MAX_MS)
    return e.RestartScheduled(generation=ctr.generation, delay_ms=delay,
                              restart_count=ctr.restart_count + 1,
                              due=cmd.finished_at + delay * 1_000_000)


def _resume_restart(world: World, env: c.Envelope, cmd: c.ResumeRestart) -> tuple[str, Events]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [_ignored(cmd, "no such container")]
    if cmd.generation != ctr.generation or not _in_backoff(ctr):
        return ctr.id, [_ignored(cmd, "no restart pending")]
    if ctr.removal_in_progress or ctr.dead:
        return ctr.id, [_ignored(cmd, "container is marked for removal")]
    return ctr.id, [e.StartInitiated(generation=ctr.generation + 1,
                                     endpoint=_endpoint_for(world, ctr), manual=False)]


def _failed(world: World, env: c.Envelope, cmd: c.ReportStepFailed) -> tuple[str, Events]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [_ignored(cmd, "no such container")]
    if cmd.step == "remove":
        if not ctr.removal_in_progress:
            return ctr.id, [_ignored(cmd, "no removal in progress")]
        return ctr.id, [e.RemovalFailed(error=cmd.error)]
    if cmd.generation != ctr.generation:
        return ctr.id, [_ignored(cmd, f"stale generation (current {ctr.generation})")]
    if not ctr.saga:
        return ctr.id, [_ignored(cmd, "no start in flight")]
    events: Events = []
    if ctr.connected and ctr.endpoint is not None:
        events.append(e.NetworkDisconnected(generation=cmd.generation,
                                            network=ctr.endpoint.network))
    events.append(e.StartFailed(generation=cmd.generation, step=cmd.step, error=cmd.error,
                                exit_code=cmd.exit_code or 128))
    if ctr.removal_in_progress:
        events.append(e.ContainerMarkedDead())
    elif ctr.host_config.auto_remove:
        # Docker's start-failure cleanup force-removes an AutoRemove container too.
        events.extend((e.RemovalStarted(force=True), e.ContainerMarkedDead()))
    return ctr.id, events


def _drift(world: World, env: c.Envelope, cmd: c.ReportDrift) -> tuple[str, Events]:
    # Recorded for audit even when the container is unknown (an orphan on the host).
    cid = env.container_id if env.container_id in world.containers else ""
    return cid, [e.DriftObserved(container_id=env.container_id, resource=cmd.resource,
                                 detail=cmd.detail)]


def _removed(world: World, env: c.Envelope, cmd: c.ReportRemoved) -> tuple[str, Events]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [_ignored(cmd, "no such container")]
    if not (ctr.dead and ctr.removal_in_progress):
        return ctr.id, [_ignored(cmd, "container is not being removed")]
    return ctr.id, [e.ContainerDestroyed(name=ctr.name)]


_HANDLERS: dict[type, Callable[..., tuple[str, Events]]] = {
    c.DefineNetwork: _define_network,
    c.RegisterImage: _register_image,
    c.RemoveImage: _remove_image,
    c.CreateContainer: _create,
    c.StartContainer: _start,
    c.StopContainer: _stop,
    c.KillContainer: _kill,
    c.RestartContainer: _restart,
    c.RemoveContainer: _remove,
    c.RenameContainer: _rename,
    c.ReportMounted: _saga_report,
    c.ReportSandbox: _saga_report,
    c.ReportEndpoint: _saga_report,
    c.ReportProcessStarted: _saga_report,
    c.ReportProcessExited: _exited,
    c.ReportStepFailed: _failed,
    c.ReportRemoved: _removed,
    c.ReportDrift: _drift,
    c.ResumeRestart: _resume_restart,
}
