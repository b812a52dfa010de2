"""Aimed kills for fault tests: freeze a process where a predicate holds, prove it, kill it.

Polling for a phase and then killing lands anywhere: the process moves on between the
poll and the signal. Here the process is frozen first (SIGSTOP), Redis is read until
nothing moves (whatever the process had already sent is applied by then), the predicate
is checked on that frozen state, and only then is the process killed (SIGKILL works on a
stopped process). A miss resumes it (SIGCONT) and aims again; a budget spent without a
hit fails the test instead of killing somewhere else.

The frozen state also says which jobs the next boot hands to rq a second time: the owed
work `resume` re-issues, and outbox entries already pushed to rq but not yet trimmed (the
at-least-once window of the outbox drain). `assert_jobs_accounted` holds rq's queue to
exactly that.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from engine.core.react import resume
from engine.keys import GROUP, Keys
from engine.outbox import decode_job
from engine.snapshot import load_world

__all__ = ["PHASES", "Frozen", "KillPoint", "assert_jobs_accounted", "kill_at", "read_state",
           "settle"]


class Frozen(NamedTuple):
    """What Redis holds of a reducer's progress at one moment."""

    done: int  # dedupe marks: commands decided
    pending: int  # entries read by a reducer and not yet written
    events: int
    outbox: list[str]  # job ids written with their events, not yet trimmed
    queue: list[str]  # rq's queue, in order

    @property
    def handed(self) -> list[str]:
        """The outbox's job ids if its drain already pushed them to rq (it trims after:
        the next boot pushes them again); else nothing."""
        ids = list(dict.fromkeys(self.outbox))  # the drain pushes each id once, in order
        return ids if ids and self.queue[-len(ids):] == ids else []


class KillPoint(NamedTuple):
    """Where a kill landed: its phase, the frozen state, the work the next boot owes."""

    phase: str
    state: Frozen
    owed: list[str]  # job ids the next boot's resume() re-issues

    @property
    def again(self) -> list[str]:
        """Job ids the next boot hands to rq once more."""
        return self.owed + self.state.handed


PHASES: dict[str, Callable[[Frozen], bool]] = {
    # A batch read but not written (the write acknowledges its entries).
    "pending": lambda s: s.pending > 0,
    # A batch written (its jobs are in the outbox) whose jobs are not in rq yet.
    "outbox": lambda s: bool(s.outbox) and not s.handed,
}


def read_state(r: Any, keys: Keys) -> Frozen:
    """Read the reducer's progress in one transaction."""
    pipe = r.pipeline(transaction=True)
    pipe.hlen(keys.done)
    pipe.xpending(keys.commands, GROUP)
    pipe.xlen(keys.events)
    pipe.lrange(keys.outbox, 0, -1)
    pipe.lrange(f"rq:queue:{keys.queue}", 0, -1)
    done, pending, events, outbox, queue = pipe.execute()
    return Frozen(int(done), int(pending["pending"]), int(events),
                  [decode_job(raw).job_id for raw in outbox], [i.decode() for i in queue])


def settle(r: Any, keys: Keys, gap: float = 0.02) -> Frozen:
    """Read until two reads `gap` apart agree: what a frozen process sent has landed."""
    state = read_state(r, keys)
    while True:
        time.sleep(gap)
        again = read_state(r, keys)
        if again == state:
            return state
        state = again


def kill_at(proc: subprocess.Popen[bytes], r: Any, keys: Keys, phase: str,
            budget: float = 20.0) -> KillPoint:
    """SIGKILL `proc` at a moment its state satisfies PHASES[phase], verified while it is
    frozen; fail when no such moment comes within `budget` seconds."""
    holds = PHASES[phase]
    deadline = time.monotonic() + budget
    tries = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before a kill in {phase!r}")
        if not holds(read_state(r, keys)):
            time.sleep(0.0005)  # a cheap look while it runs; freezing costs it time
            continue
        proc.send_signal(signal.SIGSTOP)
        tries += 1
        state = settle(r, keys)
        if holds(state):
            owed = [job.job_id for job in resume(load_world(r, keys)[0])]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL, proc.returncode
            assert read_state(r, keys) == state  # the kill moved nothing: it landed there
            return KillPoint(phase, state, owed)
        proc.send_signal(signal.SIGCONT)
    raise AssertionError(f"no kill landed in phase {phase!r}: {tries} tries in {budget}s")


def assert_jobs_accounted(jobs: list[str], decided: Counter[str], again: Counter[str]) -> None:
    """Hold rq's queue (a list: repeats count) to the jobs decided: none lost, none handed
    over more often than decided plus what the restarts explain (`again`).

    `decided` counts an id once per decision; the drain pushes an id once per drain, so an
    id decided twice in one batch reaches rq once: hence a range, not an equality.
    """
    got = Counter(jobs)
    lost = sorted(set(decided) - set(got))
    unknown = sorted(set(got) - set(decided))
    assert not lost and not unknown, f"lost {lost[:5]}, never decided {unknown[:5]}"
    wrong = {job: (n, again[job], decided[job]) for job, n in got.items()
             if not 1 <= n - again[job] <= decided[job]}
    assert not wrong, f"handed to rq (times, explained, decided): {wrong}"
