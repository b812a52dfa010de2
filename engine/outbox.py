"""Hand decided side effects to rq: the outbox drain (jobs carry JSON, never pickle)."""

from __future__ import annotations

from typing import Any

import msgspec
from rq import Queue
from rq.serializers import JSONSerializer

from engine.core.react import Job
from engine.keys import Keys
from engine.scripts import TRIM_OUTBOX

__all__ = ["JobOutbox", "decode_job", "encode_job", "queue_for"]

_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(tuple[str, str, dict[str, Any]])
_DEC_HOST = msgspec.msgpack.Decoder(tuple[str, str, dict[str, Any], str])
# No rq retries: a retried teardown could run after the next start and undo it. A job
# lost with a killed worker is re-issued by the worker's reconcile at its restart.
_JOB_TIMEOUT = 120


def encode_job(job: Job) -> bytes:
    if job.host:  # a host's job: its queue goes with it (single-host jobs stay 3 items)
        return _ENC.encode((job.func, job.job_id, job.kwargs, job.host))
    return _ENC.encode((job.func, job.job_id, job.kwargs))


def decode_job(data: bytes) -> Job:
    # A fixarray header: 0x93 for three items, 0x94 with the host.
    if data[:1] == b"\x94":
        return Job(*_DEC_HOST.decode(data))
    func, job_id, kwargs = _DEC.decode(data)
    return Job(func, job_id, kwargs)


def queue_for(redis: Any, keys: Keys, host: str = "") -> Queue:
    """Return a host's rq queue ("": the default one), with the JSON serializer so jobs
    stay primitives."""
    return Queue(keys.host_queue(host), connection=redis, serializer=JSONSerializer)


class JobOutbox:
    """Move jobs from the outbox list (written atomically with the events) into rq.

    The outbox lives in the shard (its hash slot); the rq queues may live on another
    Redis (`queue_redis`): rq's multi-key commands span slots, which Redis Cluster
    refuses (docs/decisions/0015-scale-out.md).
    """

    def __init__(self, redis: Any, keys: Keys, queue_redis: Any = None) -> None:
        self._redis = redis
        self._keys = keys
        self._queue = queue_for(redis if queue_redis is None else queue_redis, keys)
        self._trim = redis.register_script(TRIM_OUTBOX)

    def drain(self, epoch: int | None = None) -> int:
        """Enqueue every job waiting in the outbox, then drop them from it; return the count.

        A crash between enqueue and trim re-enqueues the same deterministic job ids on the
        next drain: workers are idempotent, so at-least-once is enough. With `epoch`, the
        trim is fenced: a deposed leader's late drain must not drop what the new leader
        pushed after it read (it would trim entries nobody enqueued).
        """
        raw = self._redis.lrange(self._keys.outbox, 0, -1)
        if not raw:
            return 0
        self.enqueue([decode_job(item) for item in raw])
        if epoch is None:
            self._redis.ltrim(self._keys.outbox, len(raw), -1)
        else:
            self._trim(keys=[self._keys.outbox, self._keys.epoch], args=[len(raw), epoch])
        return len(raw)

    def enqueue(self, jobs: list[Job]) -> None:
        """Enqueue jobs straight to rq (resume's owed work; ids make repeats harmless)."""
        if not jobs:
            return
        # One id may be owed twice in a drain (e.g. a removal retried after RemovalFailed
        # re-decides `remove-<id>`); rq 3 refuses repeated ids in one enqueue_many, and
        # they would share one job hash anyway: keep the latest decision of each id.
        latest = {job.job_id: job for job in jobs}
        by_host: dict[str, list[Any]] = {}
        for job in latest.values():
            by_host.setdefault(job.host, []).append(
                Queue.prepare_data(job.func, kwargs=job.kwargs, job_id=job.job_id,
                                   timeout=_JOB_TIMEOUT, result_ttl=60,
                                   failure_ttl=86400))
        for host, datas in by_host.items():
            self._host_queue(host).enqueue_many(datas)

    def _host_queue(self, host: str) -> Queue:
        """Return the queue of a host's jobs (engine.core.react routes them)."""
        if not host:
            return self._queue
        # Made on first use (the constructor is left as the shards' work shaped it).
        queues: dict[str, Queue] = self.__dict__.setdefault("_queues", {})
        queue = queues.get(host)
        if queue is None:
            queue = queues[host] = Queue(self._keys.host_queue(host),
                                               connection=self._queue.connection,
                                               serializer=JSONSerializer)
        return queue
