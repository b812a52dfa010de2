"""kill -9 of a shard's primary during a workload on 3 shards: the chaos invariants hold.

Three shards on the local 3+3 cluster, one reducer each (engine.cluster.shard_redis:
pinned to its slot's primary, which a failover moves), rq's queues on a plain Redis,
and per shard a client thread running a lifecycle mix with a SagaDriver performing its
jobs. Clients acknowledge a result only once a replica holds it (WAIT 1) and retry a
failed submit with the same command id. Mid-workload the primary owning one shard is
killed with SIGKILL; its replica is promoted; the killed node is then started again (it
rejoins as the new primary's replica, so WAIT can succeed again) and the workload goes
on. Then, per shard, the invariants of tests/chaos: every acknowledged command's events
are in the journal exactly once (by the command id in the facts' metadata, as a list so
a repeat shows), nothing is applied twice, nothing is stranded or quarantined, and the
journal replayed equals the snapshot.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from rq.exceptions import NoSuchJobError

from commands import schema as c
from engine.cluster import shard_redis
from engine.keys import Keys, keys_for
from events.specs import HostConfig, RestartPolicy
from tests.chaos.invariants import check_commands, check_replay
from tests.chaos.journal import Journal, read_journal
from tests.chaos.workload import Ledger, RecordingClient
from tests.cluster import LocalCluster, id_in_shard
from tests.harness import ReducerThread, SagaDriver, busybox, cleanup, seed

SHARDS = 3
RETRY_FOR = 60.0  # seconds a command is retried (same id) before the workload gives up
BEFORE, AFTER = 40, 40  # acknowledged commands per shard before the kill, and after it


class RetryingClient(RecordingClient):
    """A client that acknowledges with WAIT and retries with the same command id (the
    Client's own `retry_for`); the ledger (RecordingClient) records the outcome."""

    def __init__(self, redis: Any, keys: Keys, ledger: Ledger) -> None:
        super().__init__(redis, keys, ledger, replicas=1, timeout=10, retry_for=RETRY_FOR)


class ShardLoad:
    """One shard's reducer, client thread and saga driver thread."""

    def __init__(self, cluster: LocalCluster, queues: redis.Redis, prefix: str, shard: str,
                 seed_: int) -> None:
        self.keys = keys_for(shard, prefix=prefix, count=SHARDS)
        self.redis = shard_redis(cluster.url, self.keys.tag)
        self.queues = queues
        self.ledger = Ledger()
        self.client = RetryingClient(self.redis, self.keys, self.ledger)
        self.reports = RetryingClient(self.redis, self.keys, Ledger())  # the driver's
        self.driver = SagaDriver(queues, self.keys, self.reports)
        self.reducer_thread = ReducerThread(self.redis, self.keys, queue_redis=queues,
                                            block_ms=100)
        self.reducer = self.reducer_thread.reducer
        self.rng = random.Random(seed_)
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                        for f in (self._commands, self._jobs)]

    def acked(self) -> int:
        return len(self.ledger.acknowledged())

    def start(self) -> None:
        self.reducer_thread.__enter__()
        seed(self.client)
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=RETRY_FOR + 15)
        self.driver.run_pending()  # jobs the last commands asked for
        time.sleep(0.5)  # their reports decided
        self.reducer_thread.__exit__(None, None, None)

    def _guard(self, body: Any) -> None:
        try:
            body()
        except BaseException as exc:  # the test fails on it, with the traceback
            self.failures.append(exc)

    def _jobs(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.driver.run_pending():
                    time.sleep(0.01)
            except NoSuchJobError:
                # A job id queued again (a new term drains an outbox its predecessor
                # drained but could not trim): performed already, its hash deleted.
                continue
            except redis.RedisError:
                time.sleep(0.1)  # the queue Redis is not the one failing; be lenient

    def _commands(self) -> None:
        rng, client = self.rng, self.client
        made: list[str] = []
        done_ids: list[str] = []
        n = 0
        while not self.stop.is_set():
            n += 1
            roll = rng.random()
            name = f"w{self.keys.shard}-{n}"
            if roll < 0.3 or not made:
                policy = rng.choice(("no", "always"))
                cid = id_in_shard(self.keys.shard, SHARDS)
                sub = client.submit(c.CreateContainer(
                    name=name, config=busybox(),
                    host_config=HostConfig(restart_policy=RestartPolicy(name=policy))),
                    container_id=cid, check=False)
                if sub.result.ok:
                    made.append(cid)
            else:
                cid = rng.choice(made)
                cmd: c.Command = rng.choice((
                    c.StartContainer(ref=cid), c.StartContainer(ref=cid),
                    c.StopContainer(ref=cid, timeout=1), c.RestartContainer(ref=cid, timeout=1),
                    c.KillContainer(ref=cid, signal="SIGKILL"),
                    c.RenameContainer(ref=cid, new_name=name),
                    c.RemoveContainer(ref=cid, force=True)))
                if rng.random() < 0.1 and done_ids:  # an exact repeat: answered by dedupe
                    client.submit(cmd, command_id=rng.choice(done_ids), check=False)
                    continue
                command_id = uuid.uuid4().hex
                client.submit(cmd, command_id=command_id, check=False)
                done_ids.append(command_id)
                if isinstance(cmd, c.RemoveContainer):
                    made.remove(cid)


def _wait_for(what: str, condition: Any, loads: list[ShardLoad], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for load in loads:
            if load.failures:
                raise load.failures[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_a_primary_mid_workload_loses_and_repeats_nothing(
        redis_cluster: LocalCluster, queue_redis_server: Any) -> None:
    queues = redis.Redis.from_url(queue_redis_server.url)
    prefix = f"moorfo:{uuid.uuid4().hex[:10]}"
    loads = [ShardLoad(redis_cluster, queues, prefix, str(i), seed_=i) for i in range(SHARDS)]
    victim = loads[1]
    killed = None
    try:
        for load in loads:
            load.start()
        _wait_for("a first share of the workload",
                  lambda: all(x.acked() >= BEFORE for x in loads), loads)

        old_primary = redis_cluster.primary_of(victim.keys.tag)
        epoch_before = victim.reducer.lease.acquired
        acked_before = victim.acked()
        killed, promoted = redis_cluster.fail_over(victim.keys.tag)
        # The fault happened: the old primary's process is gone, its port refuses, and
        # its replica is the slot's primary now.
        assert killed is old_primary and killed.proc is not None
        assert killed.proc.poll() is not None
        with pytest.raises(redis.ConnectionError):
            killed.client(0.5).ping()
        assert promoted.info("replication")["role"] == "master"
        assert redis_cluster.primary_of(victim.keys.tag) is promoted
        # Back as the promoted node's replica: WAIT 1 can be satisfied again.
        redis_cluster.restart(killed)
        assert killed.info("replication")["role"] == "slave"

        _wait_for("the workload to go on after the failover",
                  lambda: victim.acked() >= acked_before + AFTER
                  and all(x.acked() >= BEFORE + AFTER for x in loads), loads)
    finally:
        for load in loads:
            load.finish()
        if killed is not None and not killed.alive:
            redis_cluster.restart(killed)  # leave the session's cluster whole

    for load in loads:
        assert not load.failures, load.failures
    # The victim's reducer followed the slot: it stepped down and led again, and its
    # connections go to the promoted primary; its clients felt the fault and retried.
    assert victim.reducer.lease.acquired > epoch_before
    assert victim.redis.info("server")["tcp_port"] == promoted.port
    assert victim.client.retries > 0

    for load in loads:
        journal = Journal(read_journal(load.redis, load.keys))
        violations, counts = check_commands(journal, load.ledger, load.redis, load.keys)
        print(f"shard {load.keys.shard}: {counts}, {load.client.retries} retries, "
              f"{len(journal.entries)} facts")  # shown on failure (and with -s)
        assert [v.render() for v in violations] == [], counts
        assert counts.get("lost", 0) == 0 and counts.get("applied twice", 0) == 0
        assert counts["acknowledged"] >= BEFORE + AFTER
        # By command id, as a list: each acknowledged command decided in one place.
        for sent in load.ledger.acknowledged():
            positions = journal.by_command.get(sent.command_id, [])
            assert positions and positions == list(range(positions[0],
                                                         positions[0] + len(positions)))
        assert check_replay(load.redis, load.keys) == []

    for load in loads:
        _drop(load)
    queues.close()


def _drop(load: ShardLoad) -> None:
    try:
        batch = list(load.redis.scan_iter(match=f"{load.keys.prefix}:*", count=1000))
        for start in range(0, len(batch), 500):
            load.redis.delete(*batch[start:start + 500])
    except redis.RedisError:
        pass
    cleanup(load.queues, load.keys)
    load.redis.close()
