"""Test harness: a reducer thread, a client, and a TEST-ONLY saga driver.

The saga driver stands in for the host worker until the runtime lands in tests that
exercise the engine alone: it pops the jobs the reducer handed to rq and appends the
reports a worker would. It is not a shipped feature.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import msgspec
from rq.job import Job as RqJob

from commands import schema as c
from commands.client import Client
from engine.keys import Keys, keys_for
from engine.outbox import queue_for
from engine.reducer import Reducer
from events.specs import ContainerConfig, ImageConfig, NetworkSpec

IMAGE_ID = "sha256:" + "ab" * 32
SUBNET = NetworkSpec(name="bridge", subnet="10.213.250.0/24", gateway="10.213.250.1",
                     bridge="moortest0")


def fresh_keys() -> Keys:
    """Return keys under a prefix unique to this test."""
    return keys_for(prefix=f"moortest:{uuid.uuid4().hex[:10]}")


def cleanup(redis: Any, keys: Keys) -> None:
    """Delete every key under the test's prefix and its rq queue's keys."""
    for pattern in (f"{keys.prefix}:*", f"rq:*{keys.queue}*"):
        batch = list(redis.scan_iter(match=pattern, count=1000))
        if batch:
            redis.delete(*batch)
    queue = queue_for(redis, keys)
    for job_id in queue.get_job_ids():
        redis.delete(f"rq:job:{job_id}")
    redis.delete(f"rq:queue:{keys.queue}")
    redis.srem("rq:queues", f"rq:queue:{keys.queue}")


class ReducerThread:
    """Run a Reducer in a thread until stopped."""

    def __init__(self, redis: Any, keys: Keys, **kwargs: Any) -> None:
        self.reducer = Reducer(redis, keys, **kwargs)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.reducer.run, args=(self.stop_event,),
                                       daemon=True)

    def __enter__(self) -> Reducer:
        self.thread.start()
        return self.reducer

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


def seed(client: Client) -> None:
    """Define the test network and register a busybox-like image."""
    client.define_network(SUBNET)
    client.register_image(image_id=IMAGE_ID, repo_tags=("busybox:latest",),
                          config=ImageConfig(cmd=("sh",)))


def busybox(*cmd: str) -> ContainerConfig:
    return ContainerConfig(image="busybox", cmd=cmd or ("sleep", "60"))


class SagaDriver:
    """TEST-ONLY: perform the reducer's jobs by appending the reports a worker would."""

    def __init__(self, redis: Any, keys: Keys, client: Client, keep_jobs: bool = False) -> None:
        self.queue = queue_for(redis, keys)
        # keep_jobs: leave each job's hash after performing it, as rq does for result_ttl,
        # so an id queued twice is performed twice (by default the hash goes at once).
        self.keep_jobs = keep_jobs
        self.client = client
        self.pid = 1000
        self.fail_step: str | None = None
        self.performed: list[str] = []  # job ids, in the order performed (repeats show)

    def run_pending(self) -> int:
        """Perform every job now queued; return how many."""
        count = 0
        while True:
            raw = self.queue.connection.lpop(self.queue.key)
            if raw is None:
                return count
            job_id = raw.decode()
            job = RqJob.fetch(job_id, connection=self.queue.connection,
                              serializer=self.queue.serializer)
            self.perform(job.func_name.rsplit(".", 1)[-1], job.kwargs)
            self.performed.append(job_id)
            if not self.keep_jobs:
                job.delete()
            count += 1

    def perform(self, name: str, kwargs: dict[str, Any]) -> None:
        now = time.time_ns()
        if name == "start_container":
            plan = kwargs["plan"]
            cid, gen = plan["container_id"], plan["generation"]
            reports: dict[str, c.Command] = {
                "mount": c.ReportMounted(generation=gen, rootfs=f"/merged/{cid[:12]}"),
                "sandbox": c.ReportSandbox(generation=gen, sandbox_key=f"/run/netns/{cid[:12]}"),
                "endpoint": c.ReportEndpoint(generation=gen, endpoint_id=cid[:16]),
                "spawn": c.ReportProcessStarted(generation=gen, pid=self.pid, started_at=now),
            }
            for step in plan["steps"]:
                if step == self.fail_step:
                    self.client.report(cid, c.ReportStepFailed(
                        generation=gen, step=step, error=f"{step} failed", exit_code=128))
                    return
                self.client.report(cid, reports[step])
            self.pid += 1
        elif name == "signal_container":
            self.client.report(kwargs["container_id"], c.ReportProcessExited(
                generation=kwargs["generation"], exit_code=128 + kwargs["signal"],
                finished_at=now))
        elif name == "remove_container":
            self.client.report(kwargs["container_id"], c.ReportRemoved(
                generation=kwargs["generation"]))


def drive(driver: SagaDriver, until: Any, timeout: float = 10.0) -> None:
    """Run jobs until `until()` holds (the reducer works concurrently)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        driver.run_pending()
        if until():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def all_records(redis: Any, keys: Keys) -> list[Any]:
    """Read the whole events stream as (id, EventRecord) pairs (small test streams)."""
    from commands.codec import CODEC

    return [(i.decode(), CODEC.record(f[b"d"])) for i, f in redis.xrange(keys.events)]
