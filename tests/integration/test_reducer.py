"""The reducer and client against real Redis and fakeredis."""

from __future__ import annotations

import pytest

from commands.client import Client
from engine.core.evolve import fold
from engine.core.state import status_of
from engine.errors import Conflict, NotFound
from engine.snapshot import load_world
from tests.harness import ReducerThread, SagaDriver, busybox, drive, seed
from tests.harness import all_records as read_records


def test_submit_returns_result(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5)
    with ReducerThread(r, keys):
        seed(client)
        cid = client.create(busybox(), name="web")
        assert len(cid) == 64
        with pytest.raises(Conflict, match='The container name "/web" is already in use'):
            client.create(busybox(), name="web")
        with pytest.raises(NotFound, match="No such container: nope"):
            client.start("nope", wait=False)


def test_duplicate_submit_is_a_noop_returning_the_first_result(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5)
    with ReducerThread(r, keys):
        seed(client)
        from commands import schema as c
        cmd = c.CreateContainer(name="dup", config=busybox())
        cid = "c" * 64
        first = client.submit(cmd, container_id=cid, command_id="fixed-id-1")
        second = client.submit(cmd, container_id=cid, command_id="fixed-id-1")
        assert second.result == first.result
        assert second.last_event_id == first.last_event_id
    created = [rec for _, rec in read_records(r, keys)
               if type(rec.event).__name__ == "ContainerCreated"]
    assert len(created) == 1


def test_full_lifecycle_with_saga_driver(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5)
    with ReducerThread(r, keys) as reducer:
        seed(client)
        driver = SagaDriver(r, keys, client)
        cid = client.create(busybox(), name="life")
        client.start("life", wait=False)
        drive(driver, lambda: reducer.world.containers[cid].running)
        ctr = reducer.world.containers[cid]
        assert ctr.endpoint is not None and ctr.endpoint.ip_address == "10.213.250.2"
        client.stop("life", wait=False)
        drive(driver, lambda: status_of(reducer.world.containers[cid]) == "exited")
        assert reducer.world.containers[cid].exit_code == 143
        client.remove("life", wait=False)
        drive(driver, lambda: cid not in reducer.world.containers)
        live = reducer.world
    replayed = fold(rec for _, rec in read_records(r, keys))
    assert replayed.snapshot() == live.snapshot()
    snap, _ = load_world(r, keys)
    assert snap.snapshot() == live.snapshot()


def test_restart_policy_restarts_after_the_back_off(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5)
    with ReducerThread(r, keys, block_ms=200) as reducer:
        seed(client)
        driver = SagaDriver(r, keys, client)
        from commands import schema as c
        from events.specs import HostConfig, RestartPolicy
        cid = client.create(busybox(), HostConfig(restart_policy=RestartPolicy(name="always")),
                            name="phoenix")
        client.start("phoenix", wait=False)
        drive(driver, lambda: reducer.world.containers[cid].running)
        import time
        client.report(cid, c.ReportProcessExited(generation=1, exit_code=1,
                                                 finished_at=time.time_ns()))
        seen: set[str] = set()

        def restarted() -> bool:
            ctr = reducer.world.containers[cid]
            seen.add(status_of(ctr))
            return ctr.generation == 2 and status_of(ctr) == "running"
        # the reducer's timer appends ResumeRestart once the 100 ms back-off is over
        drive(driver, restarted)
        assert "restarting" in seen
        assert reducer.world.containers[cid].restart_count == 1
        client.stop("phoenix", wait=False)
        drive(driver, lambda: status_of(reducer.world.containers[cid]) == "exited")
