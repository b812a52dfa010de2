"""Hosts against a real Redis: a worker joins, its lease lapses, it comes back.

The reducer runs in a thread; the host joins with the worker's own code (workers.hostjoin:
its lease and its JoinHost); a test-only saga driver performs the jobs from the host's
queue. The lapse is real (the heartbeat stops and Redis expires the lease), noticed by the
reducer's host watch, and recorded; the replay of the journal rebuilds the same world.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis as redislib

from commands.client import Client
from engine.errors import Conflict
from engine.outbox import queue_for
from engine.snapshot import load_world
from events import model as e
from projections.audit import replay, verify
from projections.stream import load_live
from projections.views.ps import list_containers
from tests.conftest import RedisServer
from tests.harness import ReducerThread, SagaDriver, all_records, busybox, cleanup, drive, \
    fresh_keys, seed
from workers.context import HostContext
from workers.hostjoin import Heartbeat, join

LEASE_MS = 600


@pytest.fixture
def beats() -> Iterator[dict[str, Heartbeat]]:
    """The hosts' heartbeats, stopped after the test however it ended."""
    running: dict[str, Heartbeat] = {}
    yield running
    for beat in running.values():
        beat.stop()


@pytest.fixture
def setup(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
          beats: dict[str, Heartbeat]) -> Iterator[tuple[Any, Any, Client]]:
    monkeypatch.setenv("MOOR_HOST_CHECK_MS", "50")
    monkeypatch.setenv("MOOR_BRIDGE", "moorhosts0")
    r = redislib.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    client = Client(r, keys, actor="test", timeout=10)
    yield r, keys, client
    for beat in beats.values():
        beat.stop()
    for host in ("h1", "h2"):
        queue = queue_for(r, keys, host)
        for job_id in queue.get_job_ids():
            r.delete(f"rq:job:{job_id}")
        r.delete(queue.key)
    cleanup(r, keys)
    r.close()


def host(r: Any, keys: Any, url: str, name: str) -> HostContext:
    return HostContext(redis=r, redis_url=url, keys=keys, root="/nonexistent", host_id=name)


def states(r: Any, keys: Any) -> dict[str, tuple[str, str]]:
    world, _ = load_live(r, keys)
    return {item["Id"]: (item["State"], item["Status"])
            for item in list_containers(world, all=True, now_ns=time.time_ns())}


def wait(cond: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def host_events(r: Any, keys: Any) -> list[Any]:
    return [rec.event for _, rec in all_records(r, keys)
            if isinstance(rec.event, e.HostJoined | e.HostLost | e.HostReturned)]


def test_a_host_joins_is_lost_and_returns(setup: tuple[Any, Any, Client],
                                          redis_server: RedisServer,
                                          beats: dict[str, Heartbeat]) -> None:
    r, keys, client = setup
    with ReducerThread(r, keys) as reducer:
        seed(client)  # the default network (10.213.250.0/24) and an image
        for name in ("h1", "h2"):
            beats[name] = join(host(r, keys, redis_server.url, name), lease_ms=LEASE_MS)
        driver = SagaDriver(r, keys, client)
        cids = {}
        for name in ("h1", "h2"):
            config = msgspec.structs.replace(busybox(), labels={"moorage.host": name})
            cids[name] = client.create(config, name=f"on-{name}")
            client.start(cids[name], wait=False)
        for name in ("h1", "h2"):
            driver.queue = queue_for(r, keys, name)
            drive(driver, lambda n=name: states(r, keys).get(cids[n], ("",))[0] == "running")
        assert driver.performed and all(j.startswith("start-") for j in driver.performed)
        world, _ = load_world(r, keys)
        slices = {h: world.hosts[h].subnet for h in ("h1", "h2")}
        assert slices == {"h1": "10.213.250.16/28", "h2": "10.213.250.32/28"}
        ips = {h: world.containers[cids[h]].endpoint.ip_address for h in ("h1", "h2")}
        assert ips == {"h1": "10.213.250.18", "h2": "10.213.250.34"}

        # h1 stops beating: its lease expires in Redis, the watch records the loss.
        beats["h1"].stop()
        lapsed = time.monotonic()
        wait(lambda: any(isinstance(ev, e.HostLost) for ev in host_events(r, keys)))
        assert time.monotonic() - lapsed < LEASE_MS / 1000 + 2
        assert r.exists(keys.host_lease("h1")) == 0
        assert states(r, keys) == {cids["h1"]: ("lost", "Lost (host h1)"),
                                   cids["h2"]: ("running", states(r, keys)[cids["h2"]][1])}
        with pytest.raises(Conflict, match="which is lost"):
            client.stop(cids["h1"])
        client.stop(cids["h2"], wait=False)  # the other host goes on as before
        driver.queue = queue_for(r, keys, "h2")
        drive(driver, lambda: states(r, keys)[cids["h2"]][0] == "exited")

        # h1 beats again: the watch records its return; the container is its own again.
        beats["h1"] = Heartbeat(r, keys.host_lease("h1"), LEASE_MS, "back")
        beats["h1"].beat()
        beats["h1"].start()
        wait(lambda: states(r, keys)[cids["h1"]][0] == "running")
        assert [type(ev).__name__ for ev in host_events(r, keys)] == \
            ["HostJoined", "HostJoined", "HostLost", "HostReturned"]
        # Only one loss was recorded although the watch looked many times.
        world, _ = load_world(r, keys)
        assert world.hosts["h1"].alive and world.hosts["h1"].losses == 1

        # Lost again and removed meanwhile: rm -f completes in the facts at once.
        beats["h1"].stop(release=True)
        wait(lambda: states(r, keys)[cids["h1"]][0] == "lost")
        client.remove(cids["h1"], force=True)
        assert cids["h1"] not in states(r, keys)
        live = reducer.world

    # The journal alone rebuilds the same world (hosts, slices, placement, loss included).
    replayed, _ = replay(all_records(r, keys))
    assert verify(replayed, live) == []
    assert replayed.snapshot() == live.snapshot()
    snapshot, _ = load_world(r, keys)
    assert verify(snapshot, live) == [] and snapshot.hosts == live.hosts
