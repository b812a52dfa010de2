"""Run a chaos profile end to end: engine, workload, faults, checks, clean-up, figures.

A run is one or more rounds on one engine. Each round runs the drivers for a while with
faults injected on a schedule (fixed for the CI profile, drawn from the seed for the long
one), then stops the drivers and checks the host against the state, replays the journal,
force-removes every container (each within 5 s) and proves nothing was left on the host.
At the end of the run the journal-wide invariants (every command applied exactly once,
nothing stranded, each side effect at most once per generation) are judged, the engine is
torn down by PID and the host checked once more.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.errors import MoorError, NotFound
from engine.snapshot import load_world
from tests.chaos import hoststate, invariants, observer, rig
from tests.chaos.cleanup import teardown
from tests.chaos.faults import KINDS, Injector
from tests.chaos.journal import Journal, Violation, read_journal
from tests.chaos.report import Report
from tests.chaos.rig import ChaosEngine
from tests.chaos.workload import Driver, Gate, Ledger, RecordingClient, Registry

__all__ = ["LONG", "SHORT", "Profile", "run_profile"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Profile:
    """How long to run, how hard, and which faults when."""

    name: str
    minutes: float  # workload time over all rounds
    round_seconds: float  # workload time of one round
    drivers: int
    max_live: int  # containers the workload keeps at most
    schedule: tuple[tuple[float, str], ...] | None  # (seconds into the round, kind)
    fault_every: tuple[float, float] = (6.0, 14.0)  # random schedule: the gap between faults
    lease_ms: int = 2000
    # Seconds of idle queue before the worker reconciles (it also reconciles at each
    # (re)start, which is where the faults need it).
    reconcile_interval: int = 30
    restore_window: float = 6.0  # seconds to watch Docker's restore rules after a reboot
    host_window: float = 8.0  # seconds the host check samples
    stuck_after: float = 5.0  # a mismatch unchanged this long is a stuck container


# The CI profile: every kind of fault once, at fixed points, in about two minutes.
SHORT = Profile(
    name="short", minutes=65 / 60, round_seconds=65, drivers=3, max_live=14,
    schedule=((4, "kill-supervisor"), (8, "kill-worker"), (13, "kill-reducer"),
              (19, "stop-leader"), (27, "pause-redis"), (33, "kill-redis"),
              (39, "engine-restart"), (50, "reboot")))

LONG = Profile(name="long", minutes=10, round_seconds=180, drivers=4, max_live=24,
               schedule=None)

_WEIGHTS = {"kill-worker": 3, "kill-supervisor": 3, "kill-reducer": 3, "stop-leader": 2,
            "pause-redis": 2, "kill-redis": 2, "engine-restart": 1, "reboot": 1}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def random_schedule(rng: random.Random, profile: Profile) -> tuple[tuple[float, str], ...]:
    """Draw fault points for one round: a kind by weight every `fault_every` seconds."""
    out = []
    at = rng.uniform(3, 6)
    while at < profile.round_seconds - 5:
        out.append((at, rng.choices(KINDS, weights=[_WEIGHTS[k] for k in KINDS])[0]))
        at += rng.uniform(*profile.fault_every)
    return tuple(out)


def run_profile(profile: Profile, seed: int, log: Log = _log) -> Report:
    """Run a profile with a seed on a fresh engine; return its report (never raises for a
    violation: the report lists them)."""
    why = observer.available()
    if why is not None:
        from tests.conftest import missing_capability

        missing_capability(why)
    report = Report(profile.name, seed)
    started = time.monotonic()
    engine = rig.start_engine(lease_ms=profile.lease_ms,
                              reconcile_interval=profile.reconcile_interval)
    log(f"engine {engine.token}: redis port {engine.server.port if engine.server else '?'}, "
        f"bridge {engine.bridge}, subnet {engine.subnet}, work dir {engine.workdir}")
    spawns = observer.SpawnObserver(engine.cgroup_parent)
    ledger = Ledger()
    windows: list[tuple[float, float]] = []
    killed: list[tuple[str, int]] = []
    try:
        spawns.start()
        engine.note_neighbours()
        engine.start_monitor()
        rng = random.Random(seed)
        worked = 0.0
        while worked < profile.minutes * 60:
            report.rounds += 1
            seconds = min(profile.round_seconds, profile.minutes * 60 - worked)
            _round(engine, replace(profile, round_seconds=seconds), seed, report, ledger,
                   rng, windows, killed, spawns, log)
            worked += seconds
        log("judging the journal")
        journal = Journal(read_journal(engine.redis, engine.keys))
        found, counts = invariants.check_commands(journal, ledger, engine.redis, engine.keys)
        report.counts.update(counts)
        report.violations += found
        report.violations += invariants.check_effects(journal, spawns.snapshot(), killed)
        report.violations += invariants.check_removals(ledger.removals, windows, grace=2.0)
        report.created = len(journal.created())
    finally:
        spawns.stop()
        report.spawns = len(spawns.snapshot())
        report.observer_overruns = spawns.overruns
        if spawns.failure is not None:
            report.violations.append(Violation("harness", "", f"the spawn observer failed: "
                                               f"{spawns.failure!r}"))
        if spawns.overruns:
            report.violations.append(Violation("harness", "", f"the kernel dropped "
                                               f"{spawns.overruns} batches of process events: "
                                               "the spawn check is incomplete"))
        report.violations += [Violation("program-crash", "", c) for c in engine.crashes]
        report.neighbours = dict(engine.neighbours)
        report.ops.update(ledger.ops)
        report.op_errors.update(ledger.op_errors)
        log("tearing down")
        try:
            created = Journal(read_journal(engine.redis, engine.keys)).created()
        except Exception as exc:  # noqa: BLE001 - tear down all the same
            created = []
            report.violations.append(Violation("harness", "", f"journal unreadable: {exc!r}"))
        report.violations += [Violation("teardown", "", p) for p in teardown(engine, created)]
        report.duration = time.monotonic() - started
    return report


def _round(engine: ChaosEngine, profile: Profile, seed: int, report: Report, ledger: Ledger,
           rng: random.Random, windows: list[tuple[float, float]],
           killed: list[tuple[str, int]], spawns: observer.SpawnObserver, log: Log) -> None:
    """One round: drivers and faults for `round_seconds`, then the per-round checks."""
    registry, gate, stop = Registry(), Gate(), threading.Event()
    t0 = time.monotonic()
    drivers = [Driver(i, f"{seed}-{report.rounds}", _client(engine, ledger, f"chaos-{i}"),
                      registry, gate, stop, token=engine.token, max_live=profile.max_live)
               for i in range(profile.drivers)]
    injector = Injector(engine, _client(engine, ledger, "chaos-faults"), registry, gate, rng,
                        t0, restore_window=profile.restore_window, round_no=report.rounds)
    for driver in drivers:
        driver.start()
    schedule = profile.schedule or random_schedule(rng, profile)
    try:
        engine.t0, engine.round_no = t0, report.rounds
        for offset, kind in schedule:
            if offset >= profile.round_seconds:
                break
            time.sleep(max(0.0, t0 + offset - time.monotonic()))
            point = injector.inject(kind)
            windows.append(point.window)
            log(point.render())
        time.sleep(max(0.0, t0 + profile.round_seconds - time.monotonic()))
    finally:
        stop.set()
        gate.open()
        for driver in drivers:
            driver.join(timeout=90)
    report.points += injector.points
    report.violations += injector.violations
    killed += injector.killed_runs
    for driver in drivers:
        if driver.is_alive() or driver.failure is not None:
            report.violations.append(Violation("harness", "", f"{driver.name} "
                                               f"{'still runs' if driver.is_alive() else ''} "
                                               f"{driver.failure!r}"))
    for point in injector.points:
        if not point.confirmed:
            report.violations.append(Violation("fault-not-confirmed", "", point.render()))
    log(f"round {report.rounds}: workload stopped after {time.monotonic() - t0:.0f}s; "
        "checking the host")
    with engine.lock:
        engine.start_all()
    found, stuck = hoststate.check_host(engine, profile.host_window, profile.stuck_after)
    report.violations += found
    report.stuck |= stuck
    report.violations += invariants.check_replay(engine.redis, engine.keys)
    log("removing every container")
    found, stuck = _remove_everything(engine, ledger)
    report.violations += found
    report.stuck |= stuck
    if not rig.wait_quiet(engine, 20):
        log("the commands stream did not go quiet within 20 s")
    report.violations += invariants.check_replay(engine.redis, engine.keys)
    journal = Journal(read_journal(engine.redis, engine.keys))
    report.violations += invariants.check_leaks(engine, journal.created(), spawns.snapshot())


def _client(engine: ChaosEngine, ledger: Ledger, actor: str,
            timeout: float = 10) -> RecordingClient:
    return RecordingClient(engine.redis, engine.keys, ledger, actor=actor, timeout=timeout)


def _remove_everything(engine: ChaosEngine, ledger: Ledger) -> tuple[list[Violation], set[str]]:
    """rm -f every container, each within 5 s; one that never goes is stuck."""
    client = _client(engine, ledger, "chaos-cleanup", timeout=invariants.RM_F_LIMIT)
    world, _ = load_world(engine.redis, engine.keys)
    found, stuck = [], set()
    patience = 10.0  # seconds, over all the slow ones: a stuck one stays stuck
    for cid in sorted(world.containers):
        started = time.monotonic()
        try:
            client.remove(cid, force=True)
            outcome = "destroyed"
        except NotFound:
            outcome = "destroyed"  # AutoRemove got there first
        except MoorError as exc:
            outcome = f"{type(exc).__name__}: {exc.message}"
        took = time.monotonic() - started
        if outcome == "destroyed" and took <= invariants.RM_F_LIMIT:
            continue
        waited = time.monotonic()
        gone = _wait_gone(engine, cid, patience)
        waited = time.monotonic() - waited
        patience = max(0.0, patience - waited)
        journal = Journal(read_journal(engine.redis, engine.keys))
        found.append(Violation("rm-f-5s", cid, f"rm -f at the end of the round: {outcome} "
                               f"after {took:.1f}s; destroyed {waited:.1f}s later: {gone}",
                               journal.excerpt(cid, 12)))
        if not gone:
            stuck.add(cid)
    return found, stuck


def _wait_gone(engine: ChaosEngine, cid: str, timeout: float) -> bool:
    """Wait until the container is destroyed (checked at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        world, _ = load_world(engine.redis, engine.keys)
        if cid not in world.containers:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
