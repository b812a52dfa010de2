"""Decide what the hosts report: saga steps, process exits, failures, removals, drift.

Handlers of `engine.core.decide`. A report is a fact observed on a host, so it is never
rejected: one that no longer applies (another generation, a step not awaited) is recorded
as `ReportIgnored` with the reason.
"""

from __future__ import annotations

from typing import Any

import msgspec

from commands import schema as c
from engine.core import networks
from engine.core.lifecycle import begin_start, endpoint_for, in_backoff, kill_for_removal
from engine.core.policy import policy_restart
from engine.core.state import Container, World
from engine.core.volumes import unused_anonymous, volume_mounts, volume_unmounts
from engine.errors import MoorError
from events import model as e
from events import saga

__all__ = ["drift", "exited", "failed", "ignored", "removed", "resume_restart", "saga_report"]


def ignored(cmd: Any, reason: str) -> e.ReportIgnored:
    """Record a report that changes nothing, with why (its generation as reported)."""
    return e.ReportIgnored(report=type(cmd).__name__, generation=cmd.generation, reason=reason)


def _report_container(world: World, env: c.Envelope) -> Container | None:
    return world.containers.get(env.container_id)


def saga_report(world: World, env: c.Envelope, cmd: c.SagaReport) -> tuple[str, list[e.Event]]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [ignored(cmd, "no such container")]
    step = cmd.completes
    if cmd.generation != ctr.generation:
        return ctr.id, [ignored(cmd, f"stale generation (current {ctr.generation})")]
    if not ctr.saga or ctr.saga[0] != step:
        return ctr.id, [ignored(cmd, f"step {step} not awaited")]
    if isinstance(cmd, c.ReportMounted):
        # The worker's mount step also readies the volumes: Docker's volume `mount`s.
        return ctr.id, [e.RootfsMounted(generation=cmd.generation, rootfs=cmd.rootfs),
                        *volume_mounts(ctr)]
    if isinstance(cmd, c.ReportSandbox):
        return ctr.id, [e.SandboxCreated(generation=cmd.generation, sandbox_key=cmd.sandbox_key)]
    if isinstance(cmd, c.ReportEndpoint):
        assert ctr.endpoint is not None  # the bridge saga always reserves one
        endpoint = msgspec.structs.replace(ctr.endpoint, endpoint_id=cmd.endpoint_id)
        return ctr.id, [e.NetworkConnected(generation=cmd.generation, endpoint=endpoint)]
    if ctr.removal_in_progress:
        # Docker never starts a container being removed. The process came up anyway (the
        # start was in flight when rm -f came): kill it, and record no start; its exit
        # then marks the container dead like any exit during a removal.
        return ctr.id, [ignored(cmd, "container is being removed"),
                        kill_for_removal(ctr)]
    # The networks it was connected to beyond its primary one are joined again, each as a
    # live connect (Docker joins them before the process starts; here right after).
    return ctr.id, [*_started(ctr, cmd.pid, cmd.started_at), *networks.rejoin(world, ctr)]


def _started(ctr: Container, pid: int, started_at: int) -> list[e.Event]:
    events: list[e.Event] = [e.ContainerStarted(generation=ctr.generation, pid=pid,
                                                started_at=started_at)]
    if ctr.restart_attempt:
        events.append(e.ContainerRestarted(generation=ctr.generation))
    return events


def exited(world: World, env: c.Envelope,
           cmd: c.ReportProcessExited) -> tuple[str, list[e.Event]]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [ignored(cmd, "no such container")]
    if cmd.generation != ctr.generation:
        return ctr.id, [ignored(cmd, f"stale generation (current {ctr.generation})")]
    if cmd.pid and ctr.pid and cmd.pid != ctr.pid:
        return ctr.id, [ignored(cmd, f"not the current process (pid {ctr.pid})")]
    events: list[e.Event] = []
    restart_pending = ctr.restart_pending  # asked before this exit: start again after it
    started_at = ctr.started_at
    if ctr.saga or not ctr.running:
        if ctr.saga != (saga.SPAWN,):
            return ctr.id, [ignored(cmd, "process not running")]
        # The exit overtook the worker's start report: the process did run (but a
        # container being removed is never recorded as started).
        if not ctr.removal_in_progress:
            events.extend(_started(ctr, cmd.pid, cmd.finished_at))
        started_at = cmd.finished_at
    g = cmd.generation
    if cmd.oom_killed:
        events.append(e.ContainerOOMKilled(generation=g))
    if ctr.connected and ctr.endpoint is not None:
        events.append(e.NetworkDisconnected(generation=g, network=ctr.endpoint.network))
    events += [e.NetworkDisconnected(generation=g, network=n)  # live connects' endpoints
               for n, ep in ctr.endpoints.items() if ep.endpoint_id]
    events += volume_unmounts(ctr)
    events.append(e.ContainerDied(generation=g, exit_code=cmd.exit_code,
                                  finished_at=cmd.finished_at, oom_killed=cmd.oom_killed))
    if ctr.stop_pending or restart_pending:
        events.append(e.ContainerStopped(generation=g))
    if ctr.removal_in_progress:
        events.append(e.ContainerMarkedDead())
    elif restart_pending:
        events.append(begin_start(world, ctr, restart=True))
    elif ctr.host_config.auto_remove:
        events.extend((e.RemovalStarted(force=True), e.ContainerMarkedDead()))
    else:
        scheduled = policy_restart(ctr, cmd.exit_code, started_at, cmd.finished_at)
        if scheduled is not None:
            events.append(scheduled)
    return ctr.id, events


def resume_restart(world: World, env: c.Envelope,
                   cmd: c.ResumeRestart) -> tuple[str, list[e.Event]]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [ignored(cmd, "no such container")]
    if cmd.generation != ctr.generation or not in_backoff(ctr):
        return ctr.id, [ignored(cmd, "no restart pending")]
    if ctr.removal_in_progress or ctr.dead:
        return ctr.id, [ignored(cmd, "container is marked for removal")]
    try:
        endpoint = endpoint_for(world, ctr)
    except MoorError as err:
        # Docker's restart manager gives up on a failed start: SetStopped, AutoRemove if set.
        events: list[e.Event] = [e.RestartFailed(generation=ctr.generation, error=err.message)]
        if ctr.host_config.auto_remove:
            events += [e.RemovalStarted(force=True), e.ContainerMarkedDead()]
        return ctr.id, events
    return ctr.id, [e.StartInitiated(generation=ctr.generation + 1, endpoint=endpoint,
                                     manual=False)]


def failed(world: World, env: c.Envelope, cmd: c.ReportStepFailed) -> tuple[str, list[e.Event]]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [ignored(cmd, "no such container")]
    if cmd.step == saga.REMOVE:
        if not ctr.removal_in_progress:
            return ctr.id, [ignored(cmd, "no removal in progress")]
        return ctr.id, [e.RemovalFailed(error=cmd.error)]
    if cmd.generation != ctr.generation:
        return ctr.id, [ignored(cmd, f"stale generation (current {ctr.generation})")]
    if not ctr.saga:
        return ctr.id, [ignored(cmd, "no start in flight")]
    events: list[e.Event] = []
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


def drift(world: World, env: c.Envelope, cmd: c.ReportDrift) -> tuple[str, list[e.Event]]:
    # Recorded for audit even when the container is unknown (an orphan on the host).
    cid = env.container_id if env.container_id in world.containers else ""
    return cid, [e.DriftObserved(container_id=env.container_id, resource=cmd.resource,
                                 detail=cmd.detail)]


def removed(world: World, env: c.Envelope, cmd: c.ReportRemoved) -> tuple[str, list[e.Event]]:
    ctr = _report_container(world, env)
    if ctr is None:
        return env.container_id, [ignored(cmd, "no such container")]
    if not (ctr.dead and ctr.removal_in_progress):
        return ctr.id, [ignored(cmd, "container is not being removed")]
    gone: list[e.Event] = []
    if ctr.remove_volumes or ctr.host_config.auto_remove:
        # Docker's removeMountPoints: anonymous volumes no other container uses.
        gone = [e.VolumeRemoved(name=name) for name in unused_anonymous(world, ctr)]
    return ctr.id, [e.ContainerDestroyed(name=ctr.name), *gone,
                    *networks.destroy_links(world, ctr)]
