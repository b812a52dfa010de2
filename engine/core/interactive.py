"""Decide pause, unpause and exec: running-container operations that are not its lifecycle.

Handlers of `engine.core.decide`, pure. Docker's guards and texts (moby `daemon/pause.go`,
`unpause.go`, `exec.go`). A pause or unpause is a request the host carries out
(`FreezeRequested`) and reports (`ReportFrozen`); an exec is recorded when created and when
started, and its exit when its supervisor reports it. None of them touches the container's
generation or saga, so an exec never blocks or reorders the container's own commands.
"""

from __future__ import annotations

from commands import schema as c
from commands.options import detach_key_bytes
from engine.core import names
from engine.core.hosts import check_reachable
from engine.core.reports import ignored
from engine.core.state import Container, World
from engine.errors import Conflict, Internal, InvalidParameter, NotFound
from events import model as e

__all__ = ["NOTED_ACTIONS", "create_exec", "exec_exited", "frozen", "note_action", "pause",
           "start_exec", "unpause"]

# Docker's container event actions that record an access, not a change of state.
NOTED_ACTIONS = frozenset(("top", "archive-path", "extract-to-dir", "attach", "detach",
                           "resize", "export"))


def _restarting(ctr: Container) -> Conflict:
    return Conflict(f"Container {ctr.id} is restarting, wait until the container is running")


def note_action(world: World, env: c.Envelope,
                cmd: c.NoteContainerAction) -> tuple[str, list[e.Event]]:
    """Record an access the API already performed (its own guards gave Docker's texts)."""
    ctr = names.resolve(world, cmd.ref)
    if cmd.action not in NOTED_ACTIONS:
        raise InvalidParameter(f"unknown container action {cmd.action!r}: expected one of "
                               f"{', '.join(sorted(NOTED_ACTIONS))}")
    return ctr.id, [e.ContainerActionNoted(action=cmd.action, attributes=cmd.attributes)]


def pause(world: World, env: c.Envelope, cmd: c.PauseContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    check_reachable(world, ctr)
    if not ctr.running or ctr.saga:
        raise Conflict(f"container {ctr.id} is not running")
    if ctr.paused:
        raise Conflict(f"Container {ctr.id} is already paused")
    if ctr.restarting:
        raise _restarting(ctr)
    return ctr.id, [e.FreezeRequested(generation=ctr.generation, frozen=True)]


def unpause(world: World, env: c.Envelope,
            cmd: c.UnpauseContainer) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    check_reachable(world, ctr)
    if not ctr.paused:
        raise Internal(f"Container {ctr.id} is not paused")  # Docker answers 500 here
    return ctr.id, [e.FreezeRequested(generation=ctr.generation, frozen=False)]


def frozen(world: World, env: c.Envelope, cmd: c.ReportFrozen) -> tuple[str, list[e.Event]]:
    """The host's answer to a FreezeRequested; a stale one is recorded and ignored."""
    ctr = world.containers.get(env.container_id)
    if ctr is None:
        return env.container_id, [ignored(cmd, "no such container")]
    if cmd.generation != ctr.generation or not ctr.running:
        return ctr.id, [ignored(cmd, "the run it froze has ended")]
    if cmd.error:
        return ctr.id, [e.FreezeFailed(generation=cmd.generation, frozen=cmd.frozen,
                                       error=cmd.error)]
    if cmd.frozen:
        return ctr.id, [e.ContainerPaused(generation=cmd.generation)]
    return ctr.id, [e.ContainerUnpaused(generation=cmd.generation)]


def _active(ctr: Container, ref: str) -> None:
    """Docker's getActiveContainer: running, not paused, not restarting."""
    if not ctr.running or ctr.saga:
        raise Conflict(f"container {ctr.id} is not running")
    if ctr.paused or ctr.freezing:
        raise Conflict(f"Container {ref} is paused, unpause the container before exec")
    if ctr.restarting:
        raise _restarting(ctr)


def create_exec(world: World, env: c.Envelope, cmd: c.CreateExec) -> tuple[str, list[e.Event]]:
    ctr = names.resolve(world, cmd.ref)
    check_reachable(world, ctr)
    if not names.is_full_id(cmd.exec_id):
        raise InvalidParameter(f"invalid exec id: {cmd.exec_id!r} (64 lowercase hex expected)")
    if cmd.exec_id in world.execs:
        raise Conflict(f"exec id {cmd.exec_id} is already in use")
    if not cmd.config.cmd:
        raise InvalidParameter("No exec command specified")
    try:
        detach_key_bytes(cmd.config.detach_keys)
    except ValueError:
        raise Internal(f"Invalid escape keys ({cmd.config.detach_keys}) provided") from None
    _active(ctr, cmd.ref)
    return ctr.id, [e.ExecCreated(exec_id=cmd.exec_id, config=cmd.config)]


def _exec_container(world: World, exec_id: str) -> Container:
    cid = world.execs.get(exec_id)
    if cid is None or cid not in world.containers:
        raise NotFound(f"No such exec instance: {exec_id}")
    return world.containers[cid]


def start_exec(world: World, env: c.Envelope, cmd: c.StartExec) -> tuple[str, list[e.Event]]:
    ctr = _exec_container(world, cmd.exec_id)
    check_reachable(world, ctr)
    record = ctr.execs[cmd.exec_id]
    if record.running:
        raise Conflict(f"exec command {cmd.exec_id} is already running")
    if record.started:
        raise Conflict(f"exec command {cmd.exec_id} has already run")
    _active(ctr, ctr.id)
    return ctr.id, [e.ExecStarted(exec_id=cmd.exec_id, generation=ctr.generation,
                                  detach=cmd.detach)]


def exec_exited(world: World, env: c.Envelope,
                cmd: c.ReportExecExited) -> tuple[str, list[e.Event]]:
    cid = world.execs.get(cmd.exec_id, "")
    ctr = world.containers.get(cid)
    if ctr is None or not ctr.execs[cmd.exec_id].running:
        return cid, [e.ReportIgnored(report="ReportExecExited", generation=0,
                                     reason="no such running exec")]
    return ctr.id, [e.ExecDied(exec_id=cmd.exec_id, exit_code=cmd.exit_code)]
