"""Crash recovery: kill -9 the reducer (and Redis) mid-run; the outcome is the clean run's.

A 2,000-entry lifecycle run (creates, starts, stops, kills, restarts, renames, removes,
worker reports with right and wrong generations, rejections and re-deliveries of the same
command_id) is pre-loaded into the commands stream. `moor reducer` runs as a subprocess
and is killed with SIGKILL at several points, then restarted, until every entry is
folded. The result must equal a clean, uninterrupted run of the same entries on a fresh
prefix: same events (payload and meta, in order), same snapshot, one `done` mark and one
contiguous group of events per command id, nothing pending, the outbox drained into rq.

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
import time
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from commands import schema as c
from commands.codec import CODEC
from engine.core.decide import decide
from engine.core.decider import apply_command
from engine.core.react import react
from engine.core.state import World
from engine.keys import GROUP, Keys
from engine.reducer import Reducer
from engine.snapshot import encode_world_parts, load_world, world_from_parts
from tests.conftest import RedisServer, start_redis
from tests.harness import IMAGE_ID, SUBNET, busybox, cleanup, fresh_keys
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


def _phase(r: Any, keys: Keys) -> tuple[int, int, int]:
    pipe = r.pipeline(transaction=True)
    pipe.hlen(keys.done)
    pipe.xpending(keys.commands, GROUP)
    pipe.llen(keys.outbox)
    done, pending, outbox = pipe.execute()
    return int(done), int(pending["pending"]), int(outbox)


def _aim(r: Any, keys: Keys, phase: str, budget: float = 0.5) -> None:
    """Poll briefly for the phase to kill in (best effort: the reducer does not wait)."""
    deadline = time.monotonic() + budget
    while phase != "any" and time.monotonic() < deadline:
        _, pending, outbox = _phase(r, keys)
        if (phase == "pending" and pending) or (phase == "outbox" and outbox):
            return


def _drained(r: Any, keys: Keys, last_id: bytes) -> bool:
    try:
        group = r.xinfo_groups(keys.commands)
    except redis.ResponseError:
        return False  # no stream or group yet
    return (bool(group) and group[0]["last-delivered-id"] == last_id
            and group[0]["pending"] == 0 and r.llen(keys.outbox) == 0)


# --- what a run leaves behind ---------------------------------------------------------------

def _queue_ids(r: Any, keys: Keys) -> set[str]:
    return {i.decode() for i in r.lrange(f"rq:queue:{keys.queue}", 0, -1)}


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
        "jobs": _queue_ids(r, keys),
    }


def _expected_job_ids() -> set[str]:
    """Every job id react() decides over the run (what the outbox must hand to rq)."""
    world, seen, ids = World(), set(), set()
    for env, cmd in ITEMS:
        if env.command_id in seen:
            continue
        seen.add(env.command_id)
        outcome = apply_command(world, env, cmd)
        for record in outcome.records:
            ids.update(job.job_id for job in react(world, record))
    return ids


@pytest.fixture(scope="module")
def clean_run(redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    """Fold the run once, uninterrupted, on its own prefix (in process, default batch)."""
    r = redis.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    try:
        ids = xadd_all(r, keys.commands, ENTRIES)
        reducer = Reducer(r, keys, owner="clean", block_ms=10)
        assert reducer.try_acquire()
        while reducer.step():
            pass
        assert _drained(r, keys, ids[-1])
        result = capture(r, keys)
        reducer.release()
        assert result["jobs"] == _expected_job_ids()
        assert result["state"] == state_of(reducer.world)
        yield result
    finally:
        cleanup(r, keys)
        r.close()


def assert_same_outcome(r: Any, keys: Keys, clean: dict[str, Any], last_id: bytes) -> None:
    got = capture(r, keys)
    for key in clean:
        assert got[key] == clean[key], f"{key} differs from the clean run"
    assert got["outbox"] == 0 and got["quarantined"] == 0
    assert set(got["results"]) == COMMAND_IDS  # one done mark per command id
    info = r.xinfo_groups(keys.commands)[0]
    assert info["pending"] == 0 and info["last-delivered-id"] == last_id
    assert r.xpending(keys.commands, GROUP)["pending"] == 0
    # No command applied twice: its events form one contiguous group in the journal.
    causes = [CODEC.record(d).meta.command_id for d in got["events"]]
    groups = [cause for cause, _ in groupby(causes)]
    assert len(groups) == len(set(groups)) == len(COMMAND_IDS)
    for job_id in got["jobs"]:
        assert r.exists(f"rq:job:{job_id}"), job_id


# --- the tests ----------------------------------------------------------------------------

def test_reducer_killed_mid_run_resumes_with_the_clean_outcome(redis_server, clean_run,
                                                               tmp_path):
    r = redis.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    log = tmp_path / "reducer.log"
    procs: list[ReducerProcess] = []
    try:
        ids = xadd_all(r, keys.commands, ENTRIES)
        at_kill: list[tuple[int, int, int]] = []
        # Aim each kill at a phase: a batch read but not written (pending entries), a
        # batch written but its jobs not yet handed to rq (outbox), or anywhere.
        for threshold, phase in ((200, "pending"), (700, "outbox"), (1300, "any")):
            proc = ReducerProcess(redis_server.url, keys, log)
            procs.append(proc)
            _wait(lambda t=threshold: r.hlen(keys.done) >= t, proc, 20, f"{threshold} done")
            _aim(r, keys, phase)
            proc.kill()
            at_kill.append(_phase(r, keys))
        print(f"done/pending/outbox at each kill: {at_kill}")
        assert [done for done, _, _ in at_kill] == sorted(done for done, _, _ in at_kill)
        assert at_kill[-1][0] < len(COMMAND_IDS), "the run finished before the last kill"
        proc = ReducerProcess(redis_server.url, keys, log)
        procs.append(proc)
        _wait(lambda: _drained(r, keys, ids[-1]), proc, 30, "the run to finish")
        proc.stop()
        assert proc.proc.returncode == 0
        assert r.get(keys.lease) is None  # the clean exit released the lease
        assert int(r.get(keys.epoch)) == 4  # one takeover per restart
        assert_same_outcome(r, keys, clean_run, ids[-1])
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
        ids = xadd_all(r, keys.commands, ENTRIES)
        proc = ReducerProcess(url, keys, log)
        _wait(lambda: r.hlen(keys.done) >= 900, proc, 20, "900 done")
        acknowledged = (r.hlen(keys.done), r.xlen(keys.events))
        server.kill()  # SIGKILL, reaped
        time.sleep(0.3)
        r.close()
        server = start_redis(workdir, port=server.port)
        r = redis.Redis.from_url(url)
        r.config_set("appendfsync", "always")
        # Everything acknowledged before the kill came back from the AOF.
        assert r.xlen(keys.commands) == RUN
        assert r.hlen(keys.done) >= acknowledged[0]
        assert r.xlen(keys.events) >= acknowledged[1]
        _wait(lambda: _drained(r, keys, ids[-1]), proc, 30, "the run to finish")
        assert "redis unavailable" in log.read_text()  # it noticed, waited and came back
        assert int(r.get(keys.epoch)) == 2  # it re-took the lease once Redis was back
        proc.stop()
        assert proc.proc.returncode == 0
        assert_same_outcome(r, keys, clean_run, ids[-1])
    finally:
        if proc is not None:
            proc.kill()
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
