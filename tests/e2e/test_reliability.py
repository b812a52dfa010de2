"""Regression tests for the host-side reliability findings (issue 8), on real containers.

Each drives the real reducer and worker (the `engine` fixture) into the interleaving the
finding describes and checks the outcome from outside: the journal, the host, the
container's own output. The fixture then proves `rm -f` leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.core.react import Job, resume
from engine.outbox import JobOutbox
from engine.snapshot import load_world
from events import model as e
from tests.e2e.conftest import Engine, moor_run, start_ticks, stop_process, wait_for

pytestmark = pytest.mark.privileged


def _jobs(engine: Engine) -> JobOutbox:
    return JobOutbox(engine.redis, engine.keys)


def _stop_engine(engine: Engine) -> None:
    """Stop the reducer and the worker (containers keep running: live restore)."""
    assert engine.reducer is not None
    stop_process(engine.reducer)
    engine.stop_worker()


def _timed_rm_f(engine: Engine, cid: str) -> float:
    t0 = time.monotonic()
    engine.client.remove(cid, force=True)
    return time.monotonic() - t0


def test_an_engine_restart_while_a_restarting_container_exits_leaves_no_ghost(
        engine: Engine) -> None:
    """Finding 1: reconcile must not report gen N's exit as gen N+1's, nor hide N+1's."""
    cid = moor_run(engine, "--restart", "always", "busybox", "sh", "-c", "sleep 2; exit 3")
    _stop_engine(engine)
    try:
        time.sleep(2.5)  # gen 1 exits with nobody folding it: its report waits in Redis
        engine.start_reducer()  # folds the exit, schedules and begins gen 2's start
        wait_for(lambda: (c := engine.container(cid)) is not None and c.generation == 2
                 and bool(c.saga), 15, "gen 2's start to be in flight")
    finally:
        engine.start_worker()  # reconcile runs first, while gen 2's start is in flight
    # gen 2 runs, then really exits: its own exit must be folded (no ghost "Up")
    died = wait_for(lambda: [r.event for _, r in engine.events(cid)
                             if isinstance(r.event, e.ContainerDied)
                             and r.event.generation == 2], 20, "gen 2's exit to be recorded",
                    lambda: engine.log_tail("worker"))
    assert died[0].exit_code == 3
    ignored = [r.event for _, r in engine.events(cid) if isinstance(r.event, e.ReportIgnored)
               and r.event.report == "ReportProcessExited"]
    assert not [i for i in ignored if i.generation == 2], ignored
    assert _timed_rm_f(engine, cid) < 5


def test_a_duplicate_teardown_of_an_old_generation_spares_the_live_one(
        engine: Engine) -> None:
    """Finding 3: a re-drained teardown-N after start-N+1 must not pull the sandbox."""
    cid = engine.run("sleep", "60")
    after = engine.last_event_id()
    engine.client.restart(cid, timeout=1)
    engine.wait_event(cid, after, e.ContainerRestarted)
    engine.note_pids(cid)
    ctr = engine.container(cid)
    assert ctr is not None and ctr.generation == 2 and ctr.running
    # what a crash between the outbox's enqueue and trim re-sends: the old generation's jobs
    _jobs(engine).enqueue([
        Job("workers.jobs.teardown_container", f"teardown-{cid}-1-redrained",
            {"container_id": cid, "generation": 1, "ports": False}),
        Job("workers.jobs.signal_container", f"signal-{cid}-redrained",
            {"container_id": cid, "generation": 1, "signal": 9, "timeout": None,
             "purpose": "kill"}),
    ])
    wait_for(lambda: not engine.redis.llen(f"rq:queue:{engine.keys.queue}"), 10,
             "the worker to take the re-drained jobs")
    time.sleep(0.3)  # let it finish the last one
    ctr = engine.container(cid)
    assert ctr is not None and ctr.running and ctr.generation == 2
    assert start_ticks(ctr.pid) is not None, "the live process was killed"
    held = engine.leaks(cid)
    assert any(h.startswith("netns") for h in held), held
    assert any(h.startswith("mount") for h in held), held
    assert engine.nsenter(cid, "cat", "/proc/self/net/dev").count(":") >= 2  # lo + eth0


def test_a_duplicate_start_job_after_the_exit_does_not_run_it_again(engine: Engine) -> None:
    """Finding 5: one run per generation, even when the reducer has not folded the exit."""
    engine.stop_worker()
    try:
        cid = engine.create("sh", "-c", "echo ran")
        engine.client.start(cid, wait=False)
        world, _ = load_world(engine.redis, engine.keys)
        [job] = [j for j in resume(world) if j.job_id == f"start-{cid}-1"]
        assert engine.reducer is not None
        stop_process(engine.reducer)  # nothing folds the reports: the saga stays owed
        twice = Job(job.func, f"{job.job_id}-again", job.kwargs)
        _jobs(engine).enqueue([twice])
    finally:
        engine.start_worker()
    log = Path(engine.container_dir(cid), f"{cid}-json.log")
    wait_for(lambda: not engine.redis.llen(f"rq:queue:{engine.keys.queue}"), 15,
             "the worker to run both start jobs")
    time.sleep(0.5)
    engine.start_reducer()
    engine.wait_event(cid, "", e.ContainerDied, timeout=15)
    runs = log.read_text().count('"ran')
    assert runs == 1, log.read_text()


def test_a_signal_to_a_dead_unreported_process_completes_rm_f(engine: Engine) -> None:
    """Finding 1's tail: rm -f of a container whose process and supervisor died unheard."""
    cid = engine.run("sleep", "60")
    ctr = engine.container(cid)
    assert ctr is not None
    engine.stop_worker()
    sup = engine.supervisor_pid(cid)
    assert sup is not None
    os.kill(sup, 9)  # the supervisor first: nobody will report the exit
    os.kill(ctr.pid, 9)
    wait_for(lambda: start_ticks(ctr.pid) is None, 5, "the process to die")
    assert engine.reducer is not None
    stop_process(engine.reducer)
    engine.start_reducer()
    # a worker that did not reconcile: only the signal job can notice the dead process
    engine.worker = engine._spawn("worker", [*_worker_argv(), "--no-reconcile"])
    try:
        assert _timed_rm_f(engine, cid) < 5
    finally:
        engine.stop_worker()
        engine.start_worker()


def _worker_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "moor.cli", "worker"]


def test_reconcile_leaves_a_restart_back_off_alone(engine: Engine) -> None:
    """Finding 11: no process during the back-off is by design, not a lost exit."""
    from workers.context import HostContext
    from workers.reconcile import reconcile

    cid = moor_run(engine, "--restart", "always", "busybox", "sh", "-c", "exit 1")
    wait_for(lambda: (c := engine.container(cid)) is not None and c.restarting
             and not c.saga and c.restart_due > time.time_ns() + 1_000_000_000, 30,
             "a back-off of more than a second")
    ctx = HostContext(redis=engine.redis, redis_url=engine.env["MOOR_REDIS_URL"],
                      keys=engine.keys, root=engine.data_root)
    findings = [f for f in reconcile(ctx) if f["container"] == cid]
    assert findings == []
    drift = [r.event for _, r in engine.events(cid) if isinstance(r.event, e.DriftObserved)]
    assert drift == []


def test_a_report_that_cannot_be_sent_after_the_spawn_undoes_nothing(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 4: Redis failing right after a successful spawn must not run the undo steps
    under the live process; the re-issued start finds the run and reports it."""
    from commands.codec import CODEC
    from engine.errors import Unavailable
    from tests.e2e.conftest import host_engine_id
    from workers import saga
    from workers.context import HostContext
    from workers.proc import process

    # Run the start saga here, as the engine's own worker would (same names on the host).
    for name in ("MOOR_DATA_ROOT", "MOOR_PREFIX", "MOOR_SUBNET", "MOOR_BRIDGE"):
        if name in engine.env:
            monkeypatch.setenv(name, engine.env[name])
    monkeypatch.setenv("MOOR_ENGINE_ID", host_engine_id(engine))
    if "MOOR_CGROUP_PARENT" in engine.env:
        monkeypatch.setenv("MOOR_CGROUP_PARENT", engine.env["MOOR_CGROUP_PARENT"])
    engine.stop_worker()
    cid = engine.create("sleep", "60")
    engine.client.start(cid, wait=False)
    world, _ = load_world(engine.redis, engine.keys)
    [job] = [j for j in resume(world) if j.job_id == f"start-{cid}-1"]
    plan = CODEC.plan(job.kwargs["plan"])

    class RedisGoneAfterSpawn(HostContext):
        def report(self, container_id: str, report: object, command_id: str) -> None:
            if command_id.startswith("started-"):
                raise Unavailable("cannot reach the engine's Redis: injected")
            super().report(container_id, report, command_id)  # type: ignore[arg-type]

    args = dict(redis=engine.redis, redis_url=engine.env["MOOR_REDIS_URL"], keys=engine.keys,
                root=engine.data_root)
    try:
        with pytest.raises(Unavailable, match="injected"):
            saga.start(RedisGoneAfterSpawn(**args), plan)  # the job fails...
        state_dir = engine.state_dir(cid)
        assert process.is_alive(state_dir), "the process was killed"  # ...and undoes nothing
        held = engine.leaks(cid)
        assert any(h.startswith("mount") for h in held), held
        assert any(h.startswith("netns") for h in held), held
        failed = [r for r in engine.events(cid) if isinstance(r[1].event, e.StartFailed)]
        assert failed == []
        # The start is re-issued (resume, reconcile): it finds the live run and reports it.
        saga.start(HostContext(**args), plan)
        started = engine.wait_event(cid, "", e.ContainerStarted, timeout=10)
        ref = process.read_pid_file(os.path.join(state_dir, process.PID_FILE))
        assert ref is not None and started.pid == ref.pid
        engine.note_pids(cid)
    finally:
        engine.start_worker()
