"""The reducer outlives Redis refusing its commands (issue 8, finding 6).

READONLY after a failover (the client still points at the old primary, now a replica), a
script error or a failure inside rq used to end `Reducer.run`, and `moor up` stopped the
whole engine with it. These tests inject each failure into a running reducer, then clear
it, and check that the reducer kept running, said why in its log, did not spin while the
failure lasted, and applied the waiting command exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from itertools import groupby
from typing import Any

import pytest
from redis.commands.core import Script
from redis.exceptions import ResponseError

from commands import schema as c
from commands.client import Client
from engine.core.evolve import fold
from engine.snapshot import load_world
from tests.harness import ReducerThread, all_records, busybox, seed
from tests.integration.workload import state_of

CID = "c7" * 32
READONLY = "READONLY You can't write against a read only replica."


class Refusing:
    """A Redis client whose scripts (every write the reducer makes) fail while `until` is
    in the future, as a replica or a broken script would; everything else passes through."""

    def __init__(self, real: Any, error: str) -> None:
        self._real = real
        self.error = error
        self.until = 0.0
        self.refused = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # type: ignore[arg-type]  # its EVALSHA comes here

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        with self._lock:
            if time.monotonic() < self.until:
                self.refused += 1
                raise ResponseError(self.error)
        return self._real.evalsha(sha, numkeys, *args)


def _groups(r: Any, keys: Any) -> list[str]:
    """The command ids of the journal, one per run of consecutive events: a command
    applied twice shows up twice (a list, never a set)."""
    return [cause for cause, _ in groupby(rec.meta.command_id
                                          for _, rec in all_records(r, keys))]


def _assert_replay_matches(r: Any, keys: Any, reducer: Any) -> None:
    live = state_of(reducer.world)
    assert state_of(fold(rec for _, rec in all_records(r, keys))) == live
    assert state_of(load_world(r, keys)[0]) == live


@pytest.mark.parametrize("error", [READONLY, "ERR Error running script (call to f_0): "
                                   "@user_script:9: injected failure"])
def test_redis_refusing_writes_for_a_while_does_not_end_the_reducer(backend, caplog, error):
    r, keys = backend
    caplog.set_level(logging.WARNING, logger="moorage.reducer")
    refusing = Refusing(r, error)
    client = Client(r, keys, timeout=10)
    runner = ReducerThread(refusing, keys, owner="retrying", lease_ms=600, block_ms=20)
    with runner as reducer:
        seed(client)
        seeded = _groups(r, keys)
        assert reducer.epoch == 1
        window = 1.0
        refusing.until = time.monotonic() + window
        t0 = time.monotonic()
        sub = client.submit(c.CreateContainer(name="after-the-failover", config=busybox()),
                            container_id=CID, command_id="create-after")  # waits
        took = time.monotonic() - t0
        assert sub.result.ok and runner.thread.is_alive()
    assert not runner.thread.is_alive()
    assert took >= window * 0.9  # answered only once the refusals ended
    assert int(r.get(keys.epoch)) >= 2  # it stepped down and took the lease again
    # It said why, and backed off (delays doubling from 0.1 s) instead of spinning.
    assert error.split()[0] in caplog.text and "retrying in" in caplog.text
    assert 2 <= refusing.refused <= 15, refusing.refused
    assert _groups(r, keys) == [*seeded, "create-after"]  # applied exactly once
    _assert_replay_matches(r, keys, reducer)


def test_a_failure_inside_rq_does_not_end_the_reducer(backend, caplog):
    """The batch is written, then handing its job to rq fails once: the next term hands it
    over from the outbox, and the reducer goes on."""
    r, keys = backend
    caplog.set_level(logging.WARNING, logger="moorage.reducer")
    client = Client(r, keys, timeout=10)
    runner = ReducerThread(r, keys, owner="retrying", lease_ms=600, block_ms=20)
    outbox = runner.reducer.outbox
    real_enqueue = outbox.enqueue
    failures: list[list[str]] = []

    def enqueue(jobs: list[Any]) -> None:
        if jobs and not failures:
            failures.append([job.job_id for job in jobs])
            raise ValueError(f"Job ID {jobs[0].job_id!r} appears more than once in "
                             "enqueue_many()")  # rq's own error type and text
        real_enqueue(jobs)

    outbox.enqueue = enqueue  # type: ignore[method-assign]
    queued = f"rq:queue:{keys.queue}"
    with runner as reducer:
        seed(client)
        seeded = _groups(r, keys)
        client.submit(c.CreateContainer(name="rq-fails-once", config=busybox()),
                      container_id=CID, command_id="create")
        assert client.submit(c.StartContainer(ref=CID), command_id="start").result.ok
        _wait(lambda: r.llen(queued) > 0)
        # The reducer still answers after the failure.
        assert client.submit(c.RenameContainer(ref=CID, new_name="renamed"),
                             command_id="rename").result.ok
        assert runner.thread.is_alive()
    assert failures == [[f"start-{CID}-1"]]
    assert "ValueError" in caplog.text and "retrying in" in caplog.text
    # The job reached rq after the failure (the next term's outbox drain; its owed-work
    # pass may hand the same deterministic id over again: at least once, by design).
    jobs = r.lrange(queued, 0, -1)
    assert jobs and jobs == [f"start-{CID}-1".encode()] * len(jobs), jobs
    assert _groups(r, keys) == [*seeded, "create", "start", "rename"]  # each once
    _assert_replay_matches(r, keys, reducer)


def _wait(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
