"""The host side of pause, unpause and exec: freeze or thaw a container, start an exec.

Each reports back as a command the reducer folds (`ReportFrozen`, `ReportExecExited`),
with a deterministic id so a retried job's repeat is dropped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from commands import schema as c
from engine.config import engine_id
from engine.core.state import Container
from events.caps import CAPABILITIES, capability_mask, effective_caps, no_new_privileges
from events.specs import ContainerConfig
from workers.context import HostContext
from workers.proc import execproc, freezer, seccomp
from workers.proc.init import SpawnError
from workers.proc.supervisor import report_client

__all__ = ["attach_socket", "exec_socket", "freeze", "start_exec", "thaw_for_signal"]

log = logging.getLogger("moorage.worker")

_EXIT_RETRIES = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


def exec_socket(engine: str, exec_id: str) -> str:
    """Where an exec's supervisor serves its stdio (short: unix socket paths end at 107)."""
    return f"/run/moorage/{engine}/exec/{exec_id[:32]}.sock"


def attach_socket(engine: str, cid: str, config: ContainerConfig) -> str:
    """Where a container's supervisor serves attach; "" when it serves none.

    Only a container with a TTY or an open stdin has one: the others' output is followed
    in their json-file log (`moor.api.streams`), which needs no live supervisor.
    """
    if not (config.tty or config.open_stdin):
        return ""
    return f"/run/moorage/{engine}/attach/{cid[:32]}.sock"


def freeze(ctx: HostContext, cid: str, generation: int, frozen: bool, version: int) -> None:
    """Freeze (pause) or thaw (unpause) the run the request was decided for, and report."""
    ctr = ctx.container(cid)
    if ctr is None or ctr.generation != generation or not ctr.running:
        log.info("freeze of %s gen %s is no longer current; skipped", cid[:12], generation)
        return
    error = ""
    try:
        (freezer.freeze if frozen else freezer.thaw)(cid)
    except OSError as e:
        what = "cannot pause" if frozen else "Cannot unpause"
        error = f"{what} container {cid}: {e.strerror or e}"
    ctx.report(cid, c.ReportFrozen(generation=generation, frozen=frozen, error=error),
               f"frozen-{cid}-{version}")


def thaw_for_signal(ctx: HostContext, ctr: Container, command_id: str) -> None:
    """Thaw a paused container a signal was just sent to (Docker's stop and kill of a
    paused container), and record that it is no longer paused."""
    if not freezer.is_frozen(ctr.id):
        return
    freezer.thaw(ctr.id)
    ctx.report(ctr.id, c.ReportFrozen(generation=ctr.generation, frozen=False), command_id)


def _exec_plan(ctx: HostContext, ctr: Container, exec_id: str, detach: bool
               ) -> execproc.ExecPlan:
    config = ctr.execs[exec_id].config
    host = ctr.host_config
    caps = capability_mask(effective_caps(host.cap_add, host.cap_drop, host.privileged))
    if config.privileged:  # exec --privileged: every capability for this process only
        caps = capability_mask(CAPABILITIES)
    try:
        program = seccomp.program_for(host.security_opt, host.privileged, caps,
                                      os.path.join(ctx.root, "seccomp"))
    except ValueError as e:
        raise SpawnError(128, str(e)) from None
    return execproc.ExecPlan(
        exec_id=exec_id, container_id=ctr.id, pid=ctr.pid, argv=config.cmd,
        env=(*ctr.config.env, *config.env), user=config.user or ctr.config.user,
        working_dir=config.working_dir or ctr.config.working_dir or "/", capabilities=caps,
        no_new_privs=no_new_privileges(host.security_opt), seccomp=program, tty=config.tty,
        stdin=config.attach_stdin, detach=detach, hostname=ctr.config.hostname)


def _exit_reporter(ctx: HostContext, cid: str, exec_id: str) -> Callable[[int], None]:
    """What the exec supervisor calls at the exit, on a connection of its own."""
    where = ctx.exit_report(cid, 0)

    def report(code: int) -> None:
        for delay in (*_EXIT_RETRIES, None):
            try:
                own = HostContext(redis=report_client(where), redis_url=ctx.redis_url,
                                  keys=ctx.keys, root=ctx.root, host=ctx.host)
                own.report(cid, c.ReportExecExited(exec_id=exec_id, exit_code=code),
                           f"exec-{exec_id}-exit")
                return
            except Exception:  # noqa: BLE001 - Redis away: retry, then give up loudly
                if delay is None:
                    raise
                time.sleep(delay)
    return report


def start_exec(ctx: HostContext, cid: str, exec_id: str, detach: bool) -> None:
    """Start an exec's supervisor; its process starts once the client attaches."""
    ctr = ctx.container(cid)
    if ctr is None or exec_id not in ctr.execs or not ctr.running or not ctr.pid:
        log.info("exec %s of %s: the container is gone or stopped", exec_id[:12], cid[:12])
        ctx.report(cid, c.ReportExecExited(exec_id=exec_id, exit_code=126),
                   f"exec-{exec_id}-exit")
        return
    engine = engine_id(ctx.root, ctx.keys.prefix)
    on_exit = _exit_reporter(ctx, cid, exec_id)
    try:
        execproc.spawn_exec(_exec_plan(ctx, ctr, exec_id, detach),
                            exec_socket(engine, exec_id), on_exit)
    except SpawnError as e:
        log.warning("exec %s of %s failed: %s", exec_id[:12], cid[:12], e.message)
        on_exit(e.container_exit_code)
