"""Crash recovery: kill -9 the reducer (and Redis) mid-run; the outcome is the clean run's.

A 2,000-entry lifecycle run (creates, starts, stops, kills, restarts, renames, removes,
worker reports with right and wrong generations, rejections and re-deliveries of the same
command_id) is pre-loaded into the commands stream. `moor reducer` runs as a subprocess
and is killed with SIGKILL at aimed points, then restarted, until every entry is folded.
Each kill is verified where it landed (tests/integration/crashpoints.py: the process is
frozen, the phase is checked on the frozen state, then it is killed): a batch read but not
written, a batch written whose jobs are not in rq yet. The result must equal a clean,
uninterrupted run of the same entries on a fresh prefix: same events (payload and meta, in
order), same snapshot, one `done` mark and one contiguous group of events per command id,
nothing pending, the outbox drained into rq.

rq's queue is compared as a list: every job decided reaches rq, and one that reaches it
more often than decided must be explained by a restart (owed work re-issued at boot, or
an outbox drain cut between its push and its trim), computed from the frozen state.
Then the jobs are performed (the test-only SagaDriver reports each step as a worker
would, duplicates included) and the containers must end as in the clean run.

Redis itself is killed once in a second test. With `appendfsync everysec` a process kill
normally loses nothing acknowledged (Redis write(2)s the AOF buffer before it replies;
only the fsync is deferred, which matters for power loss). But when a background fsync
is slow, everysec may postpone that write(2) for up to 2 s while replies still go out, so
acknowledged writes can exist only in Redis's memory when it dies. That test's server
therefore runs with `appendfsync always`, the setting under which the guarantee holds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from commands import schema as c
from commands.client import Client
from commands.codec import CODEC
from engine.core.decide import decide
from engine.core.decider import apply_command
from engine.core.react import react, resume
from engine.core.state import World, status_of
from engine.keys import GROUP, Keys
from engine.reducer import Reducer
from engine.snapshot import encode_world_parts, load_world, world_from_parts
from tests.conftest import RedisServer, start_redis
from tests.harness import IMAGE_ID, SUBNET, SagaDriver, busybox, cleanup, fresh_keys
from tests.integration.crashpoints import (
    KillPoint,
    assert_jobs_accounted,
    kill_at,
    settle,
)
from tests.integration.workload import (
    BASE_NS,
    Item,
    fields_of,
    generate,
    state_of,
    xadd_all,
)

ROOT = Path(__file__).resolve().parents[2]
RUN = 2000
ITEMS: list[Item] = generate(RUN, tag="cr", seed=42)
ENTRIES = [fields_of(item) for item in ITEMS]
COMMAND_IDS = {env.command_id for env, _ in ITEMS}
LEASE_MS = 800


# --- the reducer subprocess ---------------------------------------------------------------

class ReducerProcess:
    """`python -m moor.cli reducer` under a test prefix; stopped by PID."""

    def __init__(self, url: str, keys: Keys, log: Path) -> None:
        self.log = log
        env = {**os.environ, "MOOR_PREFIX": keys.prefix, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moor.cli", "--redis-url", url, "reducer",
                 "--no-default-network", "--lease-ms", str(LEASE_MS), "--batch", "50"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"reducer exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait(condition: Callable[[], bool], proc: ReducerProcess | None, timeout: float,
          what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None:
            proc.alive()
        if time.monotonic() > deadline:
            tail = proc.tail() if proc is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.001)


def _drained(r: Any, keys: Keys, last_id: bytes) -> bool:
    """Tell whether every inbox was read up to its last entry (`last_id` the run's last),
    acknowledged, and the outbox handed over."""
    ends = []
    for stream in (keys.commands, keys.reports):
        try:
            group = r.xinfo_groups(stream)
        except redis.ResponseError:
            return False  # no stream or group yet
        last = r.xrevrange(stream, count=1)
        if not group or group[0]["pending"] or group[0]["last-delivered-id"] != last[0][0]:
            return False
        ends.append(last[0][0])
    return last_id in ends and r.llen(keys.outbox) == 0


# --- what a run leaves behind ---------------------------------------------------------------

def _queue(r: Any, keys: Keys) -> list[str]:
    """rq's queue as a list, in order: an id queued twice shows twice."""
    return [i.decode() for i in r.lrange(f"rq:queue:{keys.queue}", 0, -1)]


def capture(r: Any, keys: Keys) -> dict[str, Any]:
    """Return everything a run decided, minus stream ids (which differ between runs)."""
    parts = r.hgetall(keys.world)
    return {
        "events": [f[b"d"] for _, f in r.xrange(keys.events)],
        "containers": r.hgetall(keys.containers),
        "versions": r.hgetall(keys.versions),
        "world parts": parts.get(b"parts"),
        "state": state_of(load_world(r, keys)[0]),
        "results": {k.decode(): v.partition(b" ")[2] for k, v in r.hgetall(keys.done).items()},
        "quarantined": r.xlen(keys.quarantine),
        "outbox": r.llen(keys.outbox),
    }


def _decided_jobs() -> Counter[str]:
    """Every job react() decides over the run, once per decision (independent of Redis)."""
    world, seen, ids = World(), set(), Counter[str]()
    for env, cmd in ITEMS:
        if env.command_id in seen:
            continue
        seen.add(env.command_id)
        outcome = apply_command(world, env, cmd)
        for record in outcome.records:
            ids.update(job.job_id for job in react(world, record))
    return ids


DECIDED_JOBS = _decided_jobs()


def _quiet(r: Any, keys: Keys) -> bool:
    """Nothing queued, nothing owed: every report folded, every job handed over."""
    last = r.xrevrange(keys.commands, count=1)
    return (not r.llen(f"rq:queue:{keys.queue}")) and bool(last) \
        and _drained(r, keys, last[0][0])


def perform_jobs(r: Any, keys: Keys, alive: Callable[[], None]) -> list[str]:
    """Perform every queued job as a worker would (the SagaDriver appends each step's
    report) until the reducer has folded every report and queued nothing new for 0.5 s
    (restart back-off timers included); return the job ids performed, in order."""
    driver = SagaDriver(r, keys, Client(r, keys, actor="worker"), keep_jobs=True)
    quiet_since: float | None = None
    deadline = time.monotonic() + 60
    while True:
        alive()
        now = time.monotonic()
        assert now < deadline, "the jobs never settled"
        if driver.run_pending() or not _quiet(r, keys):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since > 0.5:
            r.delete(*{f"rq:job:{job_id}" for job_id in driver.performed} or {"-"})
            return driver.performed
        time.sleep(0.01)


def containers_now(r: Any, keys: Keys) -> dict[str, Any]:
    """Each container's Docker status and generation, and the removed ids (what the jobs
    decide; pids and times come from the driver's clock and differ between runs)."""
    world = load_world(r, keys)[0]
    return {"live": {cid: (status_of(ctr), ctr.generation)
                     for cid, ctr in world.containers.items()},
            "removed": sorted(world.destroyed)}


@pytest.fixture(scope="module")
def clean_run(redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    """Fold the run once, uninterrupted, on its own prefix (in process, default batch),
    then perform its jobs."""
    r = redis.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    try:
        ids = xadd_all(r, keys, ENTRIES)
        reducer = Reducer(r, keys, owner="clean", block_ms=10)
        assert reducer.try_acquire()
        while reducer.step():
            pass
        assert _drained(r, keys, ids[-1])
        result = capture(r, keys)
        assert result["state"] == state_of(reducer.world)
        queued = _queue(r, keys)
        assert_jobs_accounted(queued, DECIDED_JOBS, Counter())  # no restart, no repeat
        stop = threading.Event()
        thread = threading.Thread(target=reducer.run, args=(stop,), daemon=True)
        thread.start()  # the same term goes on: timers fire, nothing is re-issued

        def alive() -> None:
            assert thread.is_alive(), "the clean reducer stopped"
        try:
            performed = perform_jobs(r, keys, alive)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert performed[:len(queued)] == queued
        result["after jobs"] = containers_now(r, keys)
        yield result
    finally:
        cleanup(r, keys)
        r.close()


def assert_same_outcome(r: Any, keys: Keys, clean: dict[str, Any], last_id: bytes,
                        again: Counter[str]) -> None:
    got = capture(r, keys)
    for key in got:
        assert got[key] == clean[key], f"{key} differs from the clean run"
    assert got["outbox"] == 0 and got["quarantined"] == 0
    assert set(got["results"]) == COMMAND_IDS  # one done mark per command id
    info = r.xinfo_groups(keys.commands)[0]
    assert info["pending"] == 0 and info["last-delivered-id"] == last_id
    assert r.xpending(keys.commands, GROUP)["pending"] == 0
    # The killed reducers' consumers were retired: only the live one remains.
    assert len(r.xinfo_consumers(keys.commands, GROUP)) == 1
    # No command applied twice: its events form one contiguous group in the journal.
    causes = [CODEC.record(d).meta.command_id for d in got["events"]]
    groups = [cause for cause, _ in groupby(causes)]
    assert len(groups) == len(set(groups)) == len(COMMAND_IDS)
    # Every decided job reached rq; repeats only where a restart explains them.
    queued = _queue(r, keys)
    assert_jobs_accounted(queued, DECIDED_JOBS, again)
    for job_id in set(queued):
        assert r.exists(f"rq:job:{job_id}"), job_id


def assert_jobs_performed_alike(r: Any, keys: Keys, clean: dict[str, Any],
                                proc: ReducerProcess) -> None:
    """Perform the queued jobs (repeats too) while the reducer runs; the containers must
    end as in the clean run, and the journal must still fold to the live state."""
    queued = _queue(r, keys)
    performed = perform_jobs(r, keys, proc.alive)
    assert performed[:len(queued)] == queued
    assert containers_now(r, keys) == clean["after jobs"]
    causes = [rec.meta.command_id for rec in (CODEC.record(f[b"d"])
                                              for _, f in r.xrange(keys.events))]
    groups = [cause for cause, _ in groupby(causes)]
    assert len(groups) == len(set(groups))  # the reports too: each applied once


# --- the tests ----------------------------------------------------------------------------

def test_reducer_killed_mid_run_resumes_with_the_clean_outcome(redis_server, clean_run,
                                                               tmp_path):
    r = redis.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    log = tmp_path / "reducer.log"
    procs: list[ReducerProcess] = []
    try:
        ids = xadd_all(r, keys, ENTRIES)
        points: list[KillPoint] = []
        # Each kill is aimed at a phase and verified there: a batch read but not written
        # (pending entries), a batch written but its jobs not yet handed to rq (outbox).
        for threshold, phase in ((200, "pending"), (700, "outbox"), (1300, "pending")):
            proc = ReducerProcess(redis_server.url, keys, log)
            procs.append(proc)
            _wait(lambda t=threshold: r.hlen(keys.done) >= t, proc, 20, f"{threshold} done")
            points.append(kill_at(proc.proc, r, keys, phase))
        for point in points:
            print(f"killed in {point.phase}: done={point.state.done} "
                  f"pending={point.state.pending} outbox={len(point.state.outbox)} "
                  f"owed again={len(point.owed)} re-drained={len(point.state.handed)}")
        assert [p.phase for p in points] == ["pending", "outbox", "pending"]
        dones = [p.state.done for p in points]
        assert dones == sorted(dones) and dones[0] >= 200
        assert dones[-1] < len(COMMAND_IDS), "the run finished before the last kill"
        proc = ReducerProcess(redis_server.url, keys, log)
        procs.append(proc)
        _wait(lambda: _drained(r, keys, ids[-1]), proc, 30, "the run to finish")
        again = sum((Counter(p.again) for p in points), Counter[str]())
        assert_same_outcome(r, keys, clean_run, ids[-1], again)
        assert_jobs_performed_alike(r, keys, clean_run, proc)
        proc.stop()
        assert proc.proc.returncode == 0
        assert r.get(keys.lease) is None  # the clean exit released the lease
        assert int(r.get(keys.epoch)) == 4  # one takeover per restart
    finally:
        for proc in procs:
            proc.kill()
        cleanup(r, keys)
        r.close()


def test_redis_killed_mid_run_completes_with_the_clean_outcome(clean_run, tmp_path):
    workdir = tempfile.mkdtemp(prefix="moor-test-redis-crash-")
    server = start_redis(workdir)
    url = server.url
    keys = fresh_keys()
    log = tmp_path / "reducer.log"
    proc: ReducerProcess | None = None
    r = redis.Redis.from_url(url)
    try:
        r.config_set("appendfsync", "always")
        ids = xadd_all(r, keys, ENTRIES)
        proc = ReducerProcess(url, keys, log)
        _wait(lambda: r.hlen(keys.done) >= 900, proc, 20, "900 done")
        acknowledged = (r.hlen(keys.done), r.xlen(keys.events))
        server.kill()  # SIGKILL, reaped
        # Hold the reducer while Redis is away, so the state it boots from once Redis is
        # back can be read first: what that boot hands to rq again must be explained.
        proc.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        r.close()
        server = start_redis(workdir, port=server.port)
        r = redis.Redis.from_url(url)
        r.config_set("appendfsync", "always")
        # Everything acknowledged before the kill came back from the AOF.
        assert r.xlen(keys.commands) + r.xlen(keys.reports) == RUN
        assert r.hlen(keys.done) >= acknowledged[0]
        assert r.xlen(keys.events) >= acknowledged[1]
        state = settle(r, keys)
        assert state.done < len(COMMAND_IDS), "the run finished before Redis was killed"
        again = Counter([job.job_id for job in resume(load_world(r, keys)[0])]
                        + state.handed)
        proc.proc.send_signal(signal.SIGCONT)
        _wait(lambda: _drained(r, keys, ids[-1]), proc, 30, "the run to finish")
        assert "redis unavailable" in log.read_text()  # it noticed, waited and came back
        assert int(r.get(keys.epoch)) == 2  # it re-took the lease once Redis was back
        assert_same_outcome(r, keys, clean_run, ids[-1], again)
        assert_jobs_performed_alike(r, keys, clean_run, proc)
        proc.stop()
        assert proc.proc.returncode == 0
    finally:
        if proc is not None:
            proc.kill()  # SIGKILL ends it stopped or not
        r.close()
        if server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_decisions_do_not_depend_on_the_order_of_the_snapshots_hash():
    env = c.Envelope
    world = World()
    steps: list[tuple[str, c.Command]] = [
        ("", c.DefineNetwork(network=SUBNET)),
        ("", c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox:latest",))),
        ("a" * 64, c.CreateContainer(name="first", config=busybox())),
        ("b" * 64, c.CreateContainer(name="second", config=busybox())),
        ("", c.StartContainer(ref="first")),
        ("", c.StartContainer(ref="second")),
    ]
    for n, (cid, cmd) in enumerate(steps):
        apply_command(world, env(command_id=f"o-{n}", container_id=cid,
                                 issued_at=BASE_NS + n), cmd)
    enc = msgspec.msgpack.Encoder()
    reloaded = world_from_parts(
        {k.encode(): enc.encode(v) for k, v in reversed(world.containers.items())},
        {k.encode(): str(v.version).encode() for k, v in world.containers.items()},
        {b"parts": encode_world_parts(world)})
    assert state_of(reloaded) == state_of(world)  # the same state...
    probe = env(command_id="o-rmi", issued_at=BASE_NS + 99)
    # ...must decide the same events.
    assert decide(reloaded, probe, c.RemoveImage(ref="busybox")) == decide(
        world, probe, c.RemoveImage(ref="busybox"))
