"""Decide the restore after a host reboot: Docker's `Daemon.restore` (§5.4), per container.

Handlers of `engine.core.decide`. A reboot killed every supervisor and container process
and dropped every mount and namespace; the host's worker notices the new kernel boot id
at its start and appends one `RestoreContainer` per container, then `ReportHostBooted`,
which records the boot (`HostBooted`, engine-wide) and so ends its restore.

Per container, as Docker's restore:
- a run the reboot killed (running, or in a restart back-off) is stopped: the exit its
  supervisor saved, else 255 (`ContainerDied`; a back-off's exit was recorded already);
  a start in flight fails (`StartFailed`, 255);
- then a fresh restart manager tests the policy (`policy.restore_restarts`): `always`
  even if manually stopped, `unless-stopped` unless manually stopped, `on-failure[:N]`
  on a non-zero exit with retries left, and only a container that ever started. A
  restart is Docker's `containerStart` with a reset manager: a `StartInitiated` that
  replaces it (count and back-off start over; `manual`), no `restart` event;
- a container not restarted with AutoRemove is removed (never-started ones too);
- `Dead` containers are left for a user `rm`; a removal in flight is finished.
"""

from __future__ import annotations

from commands import schema as c
from engine.core.lifecycle import endpoint_for
from engine.core.policy import restore_restarts
from engine.core.state import World
from engine.errors import MoorError
from events import model as e

__all__ = ["host_booted", "restore_container"]

REBOOT_ERROR = "the host rebooted during the start"


def _ignored(cmd: c.RestoreContainer | c.ReportHostBooted, generation: int,
             reason: str) -> e.ReportIgnored:
    return e.ReportIgnored(report=type(cmd).__name__, generation=generation, reason=reason)


def host_booted(world: World, env: c.Envelope,
                cmd: c.ReportHostBooted) -> tuple[str, list[e.Event]]:
    if cmd.boot_id == world.host_boot_id:
        return "", [_ignored(cmd, 0, "boot already recorded")]
    return "", [e.HostBooted(boot_id=cmd.boot_id, previous=world.host_boot_id)]


def restore_container(world: World, env: c.Envelope,
                      cmd: c.RestoreContainer) -> tuple[str, list[e.Event]]:
    ctr = world.containers.get(env.container_id)
    if ctr is None:
        return env.container_id, [_ignored(cmd, cmd.generation, "no such container")]
    if cmd.boot_id == world.host_boot_id:
        return ctr.id, [_ignored(cmd, cmd.generation, "boot already restored")]
    if cmd.generation != ctr.generation:
        return ctr.id, [_ignored(cmd, cmd.generation,
                                 f"stale generation (current {ctr.generation})")]
    if ctr.dead:
        return ctr.id, [_ignored(cmd, cmd.generation, "dead: left for a user rm")]
    g = ctr.generation
    events: list[e.Event] = []
    exit_code = ctr.exit_code
    if ctr.saga or ctr.running:
        ran = not ctr.saga and not ctr.restarting  # a process ran (a back-off has none)
        if ran and cmd.oom_killed:
            events.append(e.ContainerOOMKilled(generation=g))
        if ctr.connected and ctr.endpoint is not None:
            events.append(e.NetworkDisconnected(generation=g, network=ctr.endpoint.network))
        if ctr.saga:
            exit_code = 255
            events.append(e.StartFailed(generation=g, step=ctr.saga[0], error=REBOOT_ERROR,
                                        exit_code=exit_code))
        elif ran:
            exit_code = cmd.exit_code
            events.append(e.ContainerDied(generation=g, exit_code=exit_code,
                                          finished_at=cmd.finished_at or env.issued_at,
                                          oom_killed=cmd.oom_killed))
        if ctr.removal_in_progress:
            # A forced removal was waiting on this run's end: finish it.
            return ctr.id, [*events, e.ContainerMarkedDead()]
    elif ctr.removal_in_progress:
        return ctr.id, [_ignored(cmd, g, "removal in progress")]
    restart, why = restore_restarts(ctr, exit_code)
    if restart:
        try:
            endpoint = endpoint_for(world, ctr)
        except MoorError as err:
            events.append(e.RestartFailed(generation=g, error=err.message))
        else:
            events.append(e.StartInitiated(generation=g + 1, endpoint=endpoint, manual=True))
    elif ctr.host_config.auto_remove:
        events += [e.RemovalStarted(force=True), e.ContainerMarkedDead()]
    elif ctr.running and ctr.restarting and not ctr.saga:
        # The back-off's restart will not come: stopped, the exit already recorded.
        events.append(e.RestartFailed(generation=g,
                                      error=f"not restarted after the host rebooted ({why})"))
    if not events:
        events.append(_ignored(cmd, g, f"not restarted after the host rebooted ({why})"))
    return ctr.id, events
