"""Faults on the real host: a worker killed mid-start or while a container runs, a container
process killed behind the engine's back, a namespace deleted by hand.

Each ends in a state the journal explains (running, or exited with the error) and, after
`rm -f`, in a host with nothing left of the container (the `engine` fixture checks it).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from events import model as e
from tests.e2e.conftest import Engine, free_port, http_get, ps_status, start_ticks, wait_for
from workers.net import portmap

pytestmark = pytest.mark.privileged


@contextmanager
def iptables_lock() -> Iterator[None]:
    """Hold moorage's iptables lock: a worker publishing ports blocks until it is released."""
    os.makedirs(os.path.dirname(portmap.LOCK_PATH), exist_ok=True)
    fd = os.open(portmap.LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def started_jobs(engine: Engine) -> list[str]:
    registry = StartedJobRegistry(engine.keys.queue, connection=engine.redis,
                                  serializer=JSONSerializer)
    return registry.get_job_ids(cleanup=False)


def test_worker_killed_during_a_start_is_finished_by_reconcile(engine: Engine) -> None:
    port = free_port()
    cid = engine.create("httpd", "-f", "-p", "80", publish={"80/tcp": str(port)})
    after = engine.last_event_id()
    with iptables_lock():
        engine.client.start(cid, wait=False)
        # The worker took the job, mounted the rootfs and made the sandbox, and now waits
        # for the lock to publish the port: kill it there, half-way through the saga.
        wait_for(lambda: f"start-{cid}-1" in started_jobs(engine), 10,
                 "the worker to pick the start job")
        wait_for(lambda: (c := engine.container(cid)) is not None
                 and c.saga == ("endpoint", "spawn"), 10, "the mount and sandbox steps",
                 lambda: engine.log_tail("worker"))
        engine.kill_worker()
    assert os.path.exists(engine.netns_path(cid))  # half-made: what a crash leaves
    assert engine.container(cid).running is False  # type: ignore[union-attr]

    engine.start_worker()  # reconcile re-issues the owed start
    outcome = engine.wait_event(cid, after, (e.ContainerStarted, e.StartFailed))
    engine.note_pids(cid)
    doc = engine.inspect(cid)
    if isinstance(outcome, e.StartFailed):
        # Acceptable only as a clean failure: exited with the error, nothing held.
        assert doc["State"]["Status"] == "exited" and doc["State"]["Error"]
        wait_for(lambda: engine.leaks(cid) == [f"directory {engine.container_dir(cid)}"], 10,
                 "the failed start to release what it made", lambda: "\n".join(engine.leaks(cid)))
        return
    assert doc["State"]["Running"] is True
    ip = doc["NetworkSettings"]["IPAddress"]
    # It joined its own sandbox, not the host's network, and the port was published.
    assert os.readlink(f"/proc/{doc['State']['Pid']}/ns/net") != os.readlink("/proc/self/ns/net")
    assert f"inet {ip}/" in engine.nsenter(cid, "ip", "-4", "-o", "addr", "show", "eth0")
    assert http_get("127.0.0.1", port, "/missing")[0] == 404
    started = [r for _, r in engine.events(cid) if isinstance(r.event, e.ContainerStarted)]
    assert len(started) == 1  # one start, not two


def test_container_process_killed_by_hand_is_reported_exited(engine: Engine) -> None:
    cid = engine.run("sleep", "1000")
    after = engine.last_event_id()
    pid = engine.inspect(cid)["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)
    died = engine.wait_event(cid, after, e.ContainerDied)
    assert died.exit_code == 137
    assert ps_status(engine, cid).startswith("Exited (137)")
    # The teardown releases what the run held; only the stopped container's files stay.
    wait_for(lambda: engine.leaks(cid) == [f"directory {engine.container_dir(cid)}"], 10,
             "the teardown after the exit", lambda: "\n".join(engine.leaks(cid)))


def test_exit_while_the_worker_is_dead_is_still_reported(engine: Engine) -> None:
    cid = engine.run("sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7")
    after = engine.last_event_id()
    supervisor = engine.supervisor_pid(cid)
    assert supervisor is not None
    engine.kill_worker()
    assert start_ticks(supervisor) is not None  # the supervisor outlives its worker
    Path(engine.container_dir(cid), "merged", "tmp", "go").touch()
    # No worker runs: the supervisor itself reports the exit to the commands stream.
    died = engine.wait_event(cid, after, e.ContainerDied)
    assert died.exit_code == 7
    assert ps_status(engine, cid).startswith("Exited (7)")
    status = json.loads(Path(engine.state_dir(cid), "exit.json").read_text())
    assert status["exit_code"] == 7
    # The teardown job waited in the queue for a worker.
    assert os.path.exists(engine.netns_path(cid))
    engine.start_worker()
    wait_for(lambda: engine.leaks(cid) == [f"directory {engine.container_dir(cid)}"], 10,
             "the teardown once a worker is back", lambda: "\n".join(engine.leaks(cid)))


def test_netns_deleted_by_hand_is_reported_as_drift(engine: Engine) -> None:
    cid = engine.run("sleep", "1000")
    subprocess.run(["ip", "netns", "delete", os.path.basename(engine.netns_path(cid))],
                   check=True)
    engine.stop_worker()
    engine.start_worker()  # reconcile runs before the worker takes jobs
    drifts = wait_for(lambda: [r.event for _, r in engine.events(cid)
                               if isinstance(r.event, e.DriftObserved)], 10,
                      "a DriftObserved event", lambda: engine.log_tail("worker"))
    assert [(d.container_id, d.resource) for d in drifts] == [(cid, "netns")]
    assert "missing" in drifts[0].detail
    timeline = engine.moor("replay", "--format", "json").stdout
    rows = [json.loads(line) for line in timeline.splitlines() if "DriftObserved" in line]
    assert rows, timeline[-2000:]
    assert engine.container(cid).running  # type: ignore[union-attr]  # reported, not acted on
