"""Docker's restore rules after a host reboot, as a model independent of the engine's code.

`docker-semantics.md` §5.4 (with the policy table of §5.1): after the daemon restarts,
a container persisted as running whose process is gone is stopped with the task's exit
code or **255** when none was saved; then every stopped container that has been started
before is marked for restart by the policy test — `always`: yes, even if manually
stopped; `unless-stopped`: unless manually stopped; `on-failure[:N]`: exit code ≠ 0 and
(N = 0 or restarts so far < N); `no`: never — or, when not restarted and AutoRemove is
set, for removal (moby's `Daemon.restore` marks a stopped AutoRemove container for
removal whether or not it ever ran). `Dead` containers wait for a user `rm`.

`expect` turns the state frozen at the reboot (read from Redis with no reducer running)
into expectations; `judge` checks them against the journal written after the reboot.
Transitional containers (a start, stop, restart or removal in flight at the reboot) are
left out: Docker's outcome for them depends on timing the model cannot see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine.core.state import Container, World
from events import model as e
from tests.chaos.journal import Journal, Violation, read_journal

__all__ = ["Expectation", "expect", "judge", "should_restart"]


@dataclass(frozen=True)
class Expectation:
    """What Docker would do with one container at restore."""

    cid: str
    state: str  # its state at the reboot, in words
    generation: int  # the generation that ran at the reboot (0: none ran)
    exit_255: bool  # it ran, no exit status was saved: 255 must be recorded
    restart: bool | None  # it must (True) or must not (False) start again; None: unknown
    removed: bool  # AutoRemove: it must be removed
    rule: str


def should_restart(ctr: Container, exit_code: int) -> tuple[bool, str]:
    """Return Docker's restore-time policy test for a stopped container, and the rule."""
    policy = ctr.host_config.restart_policy
    name, most = policy.name or "no", policy.maximum_retry_count
    if name == "always":
        return True, "always: restarted at restore, even if manually stopped"
    if name == "unless-stopped":
        return (not ctr.manually_stopped,
                f"unless-stopped: restarted unless manually stopped "
                f"(manually stopped: {ctr.manually_stopped})")
    if name == "on-failure":
        ok = exit_code != 0 and (most == 0 or ctr.restart_count < most)
        return ok, (f"on-failure:{most}: restarted when exit code {exit_code} != 0 and "
                    f"restarts so far {ctr.restart_count} < {most or 'unlimited'}")
    return False, "no: never restarted"


def expect(world: World, saved: dict[str, int | None], due_within: float) -> list[Expectation]:
    """Derive the expectations from the frozen state and the exit codes saved on disk.

    `saved` maps each container whose process ran at the reboot to the exit code its
    supervisor had saved (None: none). Restarts due later than `due_within` seconds from
    now (a long back-off) are not expected within the observation.
    """
    out = []
    now = time.time_ns()
    for ctr in world.containers.values():
        if ctr.removal_in_progress or ctr.dead or ctr.saga or ctr.stop_pending \
                or ctr.restart_pending or ctr.paused:
            continue
        if ctr.running and not ctr.restarting:
            code = saved.get(ctr.id)
            exit_code = 255 if code is None else code
            if ctr.host_config.auto_remove:
                out.append(Expectation(ctr.id, "running", ctr.generation, code is None, False,
                                       True, "AutoRemove: removed at restore"))
                continue
            restart, rule = should_restart(ctr, exit_code)
            out.append(Expectation(ctr.id, "running", ctr.generation, code is None, restart,
                                   False, rule))
        elif ctr.running and ctr.restarting:
            restart, rule = should_restart(ctr, ctr.exit_code)
            due_in = (ctr.restart_due - now) / 1e9
            out.append(Expectation(ctr.id, "restarting", 0, False,
                                   restart if due_in < due_within else None, False, rule))
        else:
            state = "created" if ctr.started_at == 0 else "exited"
            restart, rule = should_restart(ctr, ctr.exit_code)
            if ctr.started_at == 0:
                restart, rule = False, "never started: not restarted at restore"
            removed = not restart and ctr.host_config.auto_remove
            if removed:
                rule += "; AutoRemove: removed at restore"
            out.append(Expectation(ctr.id, state, 0, False, restart, removed, rule))
    return sorted(out, key=lambda x: x.cid)


def _outcome(journal: Journal, mark: str, x: Expectation) -> tuple[list[int], bool, bool]:
    """Return (exit codes recorded for the generation, restarted or scheduled, removed)."""
    codes, restarted, removed = [], False, False
    for _, record in journal.after(mark):
        if record.meta.container_id != x.cid:
            continue
        ev = record.event
        if isinstance(ev, e.ContainerDied) and ev.generation == x.generation:
            codes.append(ev.exit_code)
        elif isinstance(ev, e.StartInitiated | e.RestartScheduled):
            restarted = True
        elif isinstance(ev, e.RemovalStarted | e.ContainerDestroyed):
            removed = True
    return codes, restarted, removed


def judge(redis: Any, keys: Any, mark: str, expectations: list[Expectation],
          window: float) -> list[Violation]:
    """Watch the journal after the reboot for `window` seconds; return the broken rules.

    Positive expectations may be met any time in the window; negative ones (no restart)
    are judged at its end.
    """
    deadline = time.monotonic() + window
    while True:
        journal = Journal(read_journal(redis, keys))
        pending = False
        for x in expectations:
            codes, restarted, removed = _outcome(journal, mark, x)
            if (x.exit_255 and not codes) or (x.restart and not restarted) \
                    or (x.removed and not removed):
                pending = True
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    found = []
    for x in expectations:
        codes, restarted, removed = _outcome(journal, mark, x)
        problems = []
        if x.exit_255 and codes != [255]:
            problems.append(f"exit codes recorded for generation {x.generation}: {codes} "
                            "(no status was saved: Docker records 255, once)")
        if x.restart is True and not restarted and not removed:
            problems.append(f"not restarted within {window:g}s of the reboot; rule: {x.rule}")
        if x.restart is False and restarted:
            problems.append(f"restarted after the reboot; rule: {x.rule}")
        if x.removed and not removed:
            problems.append(f"not removed after the reboot; rule: {x.rule}")
        for problem in problems:
            found.append(Violation("restore-rules", x.cid,
                                   f"{x.state} at the reboot: {problem}",
                                   journal.excerpt(x.cid, 10)))
    return found
