"""The engine suite with 3 shards on a real Redis Cluster (3 primaries + 3 replicas).

Each shard has its own keys (`keys_for(str(i), prefix, count=3)`: a hash tag per shard,
one slot each, spread so that the 3 shards sit on the 3 primaries), its own reducer on
`engine.cluster.shard_redis(url, keys.tag)` (a plain client pinned to the slot's
primary) with rq's queues on a separate plain Redis, and clients that acknowledge a
result only once a replica holds it (`Client(..., replicas=1)`: WAIT).

The scenarios of test_reducer.py and test_rebuild.py run unchanged on each shard: their
module's `Client`, `ReducerThread`, `SagaDriver` and `Reducer` are swapped for the
cluster-wired ones for the test's duration (monkeypatch), so the suite and its cluster
run cannot drift apart. What those files do not cover (restart, kill, Docker's
rejection texts of a lifecycle, replay of each shard against its snapshot) is here.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import tests.integration.test_rebuild as rebuild_suite
import tests.integration.test_reducer as reducer_suite
from commands import schema as c
from commands.client import Client
from engine.cluster import shard_redis, slot_of
from engine.core.state import status_of
from engine.errors import Conflict, NotFound, NotModified
from engine.keys import Keys, keys_for
from engine.reducer import Reducer
from engine.shards import shard_of_id
from events.specs import HostConfig, RestartPolicy
from tests.chaos.invariants import check_replay
from tests.cluster import LocalCluster, id_in_shard
from tests.harness import ReducerThread, SagaDriver, busybox, cleanup, drive, seed

SHARDS = 3


@dataclass
class Shard:
    """One shard of the test deployment: its keys, its primary's client, the queue Redis."""

    keys: Keys
    redis: Any  # engine.cluster.shard_redis: follows the slot's primary
    queues: Any  # plain Redis holding rq's queues

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("timeout", 10)
        return Client(self.redis, self.keys, replicas=1, **kwargs)

    def reducer_thread(self, **kwargs: Any) -> ReducerThread:
        return ReducerThread(self.redis, self.keys, queue_redis=self.queues, **kwargs)

    def new_id(self) -> str:
        return id_in_shard(self.keys.shard, SHARDS)


def _drop_shard_keys(shard: Shard) -> None:
    """Delete the shard's keys (all in its slot, on its primary) and its rq queue."""
    try:
        batch = list(shard.redis.scan_iter(match=f"{shard.keys.prefix}:*", count=1000))
        for start in range(0, len(batch), 500):
            shard.redis.delete(*batch[start:start + 500])  # one slot: multi-key is fine
    except redis.RedisError:
        pass  # the cluster is the session's and goes away with it
    cleanup(shard.queues, shard.keys)


@pytest.fixture
def queues(queue_redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(queue_redis_server.url)
    yield client
    client.close()


@pytest.fixture(params=[str(i) for i in range(SHARDS)], ids=lambda s: f"shard{s}")
def shard(request: pytest.FixtureRequest, redis_cluster: LocalCluster,
          queues: redis.Redis) -> Iterator[Shard]:
    """One shard of a fresh 3-shard deployment (a prefix unique to the test)."""
    keys = keys_for(request.param, prefix=f"moorclu:{uuid.uuid4().hex[:10]}", count=SHARDS)
    one = Shard(keys, shard_redis(redis_cluster.url, keys.tag), queues)
    yield one
    _drop_shard_keys(one)
    one.redis.close()


def _on_cluster(monkeypatch: pytest.MonkeyPatch, module: Any, shard: Shard) -> None:
    """Wire a test module's harness names to the cluster shard for one test."""
    patches = {
        "Client": functools.partial(Client, replicas=1),
        "ReducerThread": functools.partial(ReducerThread, queue_redis=shard.queues),
        "SagaDriver": lambda _redis, keys, client, **kw: SagaDriver(shard.queues, keys,
                                                                    client, **kw),
        "Reducer": functools.partial(Reducer, queue_redis=shard.queues),
    }
    for name, replacement in patches.items():
        if hasattr(module, name):
            monkeypatch.setattr(module, name, replacement)


# --- the layout -----------------------------------------------------------------------------

def test_three_shards_live_on_three_primaries(redis_cluster: LocalCluster) -> None:
    keys = [keys_for(str(i), prefix="moorclu-layout", count=SHARDS) for i in range(SHARDS)]
    primaries = [redis_cluster.primary_of(k.tag) for k in keys]
    assert len({p.port for p in primaries}) == SHARDS
    for k, primary in zip(keys, primaries, strict=True):
        # Every key of the shard carries its tag: one slot.
        assert {slot_of(k.tag)} == {redis.crc.key_slot(name.encode()) for name in (
            k.commands, k.events, k.done, k.containers, k.epoch, k.outbox, k.reply("x"),
            k.sync())}
        # shard_redis talks to that primary, and it is a primary with an online replica.
        r = shard_redis(redis_cluster.url, k.tag)
        try:
            assert r.info("server")["tcp_port"] == primary.port
            assert r.info("replication")["role"] == "master"
            assert r.set(k.sync(), "1", px=1000)
        finally:
            r.close()
        assert redis_cluster.replicas_of(primary)


def test_a_connection_used_directly_dials_the_slot_owner(redis_cluster: LocalCluster) -> None:
    """engine.writer makes its own connection and sends on it without connect(): the
    socket it opens must go to the slot's primary too, not to the last host it knew
    (a dead primary after a failover) or redis-py's default localhost:6379."""
    from tests.conftest import free_port

    keys = keys_for("2", prefix="moorclu-direct", count=SHARDS)
    r = shard_redis(redis_cluster.url, keys.tag)
    conn = r.connection_pool.make_connection()
    try:
        conn.host, conn.port = "127.0.0.1", free_port()  # stale: nothing listens there
        conn.send_packed_command(conn.pack_command("PING"))
        assert r.parse_response(conn, "PING")
        assert conn.port == redis_cluster.primary_of(keys.tag).port
    finally:
        conn.disconnect()
        r.close()


# --- the scenarios of test_reducer.py and test_rebuild.py, on every shard -----------------

REDUCER_SCENARIOS = [
    reducer_suite.test_submit_returns_result,
    reducer_suite.test_duplicate_submit_is_a_noop_returning_the_first_result,
    reducer_suite.test_full_lifecycle_with_saga_driver,
    reducer_suite.test_restart_policy_restarts_after_the_back_off,
]
REBUILD_SCENARIOS = [
    rebuild_suite.test_deleting_the_snapshot_and_restarting_rebuilds_the_same_state,
    rebuild_suite.test_rebuild_is_idempotent_and_matches_a_replay,
    rebuild_suite.test_a_lost_versions_hash_is_rebuilt_on_the_first_refused_write,
]


@pytest.mark.parametrize("scenario", REDUCER_SCENARIOS, ids=lambda f: f.__name__[5:])
def test_reducer_scenario(shard: Shard, scenario: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _on_cluster(monkeypatch, reducer_suite, shard)
    scenario((shard.redis, shard.keys))
    assert check_replay(shard.redis, shard.keys) == []


@pytest.mark.parametrize("scenario", REBUILD_SCENARIOS, ids=lambda f: f.__name__[5:])
def test_rebuild_scenario(shard: Shard, scenario: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _on_cluster(monkeypatch, rebuild_suite, shard)
    scenario((shard.redis, shard.keys))
    assert check_replay(shard.redis, shard.keys) == []


# --- what the reused files do not cover ----------------------------------------------------

def test_lifecycle_restart_kill_and_docker_rejections(shard: Shard) -> None:
    client = shard.client()
    with shard.reducer_thread(block_ms=100) as reducer:
        seed(client)
        driver = SagaDriver(shard.queues, shard.keys, client)

        def status(cid: str) -> str:
            return status_of(reducer.world.containers[cid])

        cid = client.create(busybox(), name="cycle", container_id=shard.new_id())
        assert shard_of_id(cid, SHARDS) == shard.keys.shard
        with pytest.raises(Conflict, match='cannot kill container: cycle: container '
                                           f'{cid} is not running'):
            client.kill("cycle")
        client.start("cycle", wait=False)
        drive(driver, lambda: status(cid) == "running")
        with pytest.raises(NotModified):
            client.submit(c.StartContainer(ref="cycle"))
        with pytest.raises(Conflict, match='cannot remove container "cycle": container is '
                                           "running: stop the container before removing "
                                           "or force remove"):
            client.remove("cycle", wait=False)

        client.restart("cycle", wait=False)
        drive(driver, lambda: reducer.world.containers[cid].generation == 2
              and status(cid) == "running")

        client.kill("cycle")
        drive(driver, lambda: status(cid) == "exited")
        assert reducer.world.containers[cid].exit_code == 137

        # on-failure:1 restarts once, then the exit stands.
        flaky = client.create(busybox(), HostConfig(restart_policy=RestartPolicy(
            name="on-failure", maximum_retry_count=1)), name="flaky", container_id=shard.new_id())
        client.start("flaky", wait=False)
        drive(driver, lambda: status(flaky) == "running")
        for generation in (1, 2):
            drive(driver, lambda g=generation: reducer.world.containers[flaky].generation == g
                  and status(flaky) == "running")
            client.report(flaky, c.ReportProcessExited(generation=generation, exit_code=3,
                                                       finished_at=time.time_ns()))
        drive(driver, lambda: status(flaky) == "exited"
              and reducer.world.containers[flaky].generation == 2)
        assert reducer.world.containers[flaky].restart_count == 1

        client.remove("cycle", wait=False)
        client.remove("flaky", force=True, wait=False)
        drive(driver, lambda: cid not in reducer.world.containers
              and flaky not in reducer.world.containers)
        with pytest.raises(NotFound, match="No such container: cycle"):
            client.start("cycle", wait=False)
        with pytest.raises(NotFound, match="No such container: cycle"):
            client.restart("cycle", wait=False)
        live = reducer.world.snapshot()
    assert check_replay(shard.redis, shard.keys) == []
    assert Reducer(shard.redis, shard.keys, queue_redis=shard.queues).rebuild().snapshot() \
        == live


def test_three_shards_fold_side_by_side(redis_cluster: LocalCluster, queues: redis.Redis) -> None:
    """All 3 reducers run at once, each on its own primary; each shard's journal holds
    only its own containers, and replays to its snapshot."""
    prefix = f"moorclu:{uuid.uuid4().hex[:10]}"
    shards = []
    for i in range(SHARDS):
        keys = keys_for(str(i), prefix=prefix, count=SHARDS)
        shards.append(Shard(keys, shard_redis(redis_cluster.url, keys.tag), queues))
    threads = [s.reducer_thread(block_ms=100) for s in shards]
    made: dict[str, list[str]] = {s.keys.shard: [] for s in shards}
    try:
        reducers = [t.__enter__() for t in threads]
        for s in shards:
            client = s.client()
            seed(client)
            for k in range(5):
                made[s.keys.shard].append(client.create(busybox(), name=f"s{s.keys.shard}-{k}",
                                                        container_id=s.new_id()))
        for s, reducer in zip(shards, reducers, strict=True):
            assert sorted(reducer.world.containers) == sorted(made[s.keys.shard])
    finally:
        for t in threads:
            t.__exit__(None, None, None)
    for s in shards:
        assert check_replay(s.redis, s.keys) == []
        journal_ids = {rec.meta.container_id for _, rec in reducer_suite.read_records(
            s.redis, s.keys) if rec.meta.container_id}
        assert journal_ids == set(made[s.keys.shard])
        _drop_shard_keys(s)
        s.redis.close()
