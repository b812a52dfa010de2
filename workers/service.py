"""This host's rq worker (no fork per job), with the host context set; `moor worker` runs it."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from engine.acl import WORKER, connect_kwargs
from engine.config import data_root, host_id, key_prefix
from engine.errors import Unavailable
from engine.keys import keys_for
from workers import nsutil, saga
from workers.context import HostContext, configure
from workers.reconcile import reconcile

__all__ = ["make_worker", "serve"]

log = logging.getLogger("moorage.worker")

_RETRY_FIRST = 0.1  # seconds before the worker tries Redis again, doubling
_RETRY_CAP = 2.0
_PUBSUB_WAKE = 1.0  # seconds rq's command listener blocks per read
_HEARTBEAT_REUSE = 1.0  # seconds: a heartbeat this recent (and as long) is not repeated


class _Worker(SimpleWorker):
    """rq's SimpleWorker with fewer Redis round trips around each job.

    rq sends a heartbeat (HSET + two EXPIREs) outside any pipeline three times per job
    and marks the worker idle twice in a row: ~7 round trips of ~0.3 ms, some of them
    between dequeuing a job and running it. Here a heartbeat is one pipelined round trip,
    and is skipped when one at least as long was sent under a second ago (the worker's
    key then still lives for minutes); the idle state is written once.
    """

    _beat: tuple[float, int] = (-1e9, 0)  # (monotonic time, ttl) of the last heartbeat

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        ttl = timeout or self.worker_ttl + 60
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
        else:
            at, last_ttl = self._beat
            if time.monotonic() - at < _HEARTBEAT_REUSE and last_ttl >= ttl:
                return
            with self.connection.pipeline(transaction=False) as pipe:
                super().heartbeat(timeout, pipeline=pipe)
                pipe.execute()
        self._beat = (time.monotonic(), ttl)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == getattr(self, "_state", None):
            return  # already written (rq sets "idle" after a job and again before dequeuing)
        super().set_state(state, pipeline=pipeline)

    def subscribe(self) -> None:
        """Subscribe to rq's command channel with a listener that wakes every second.

        rq's listener blocks 60 s per read; with redis-py 8 closing the pubsub waits for
        that read, so a worker stopped in its first minute hung for up to 60 s.
        """
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=_PUBSUB_WAKE, daemon=True,
            exception_handler=self._pubsub_exception_handler)


def make_worker(context: HostContext, name: str | None = None) -> SimpleWorker:
    """Configure the job context and return an rq worker on this host's queue."""
    configure(context)
    return _Worker([context.keys.host_queue(context.host_id)],
                   connection=context.queue_redis or context.redis,
                   serializer=JSONSerializer, name=name, log_job_description=False)


def _stores(url: str, root: str) -> tuple[Any, Any, Any]:
    """Return (the shard's Redis, its keys, the queues' Redis or None) for this worker.

    A sharded deployment runs one worker per shard on each machine (MOOR_SHARD), each an
    engine of its own (engine.config.engine_id). On Redis Cluster the shard's client is
    pinned to its slot's primary and the rq queues live on MOOR_QUEUE_URL's plain Redis.
    """
    from engine.cluster import on_cluster
    from engine.config import queue_url, shard_count, shard_of_process

    auth = connect_kwargs(url, root, WORKER)
    count = shard_count()
    keys = keys_for(shard_of_process(), prefix=key_prefix(), count=count)
    queues = queue_url()
    queue_redis = (redis.Redis.from_url(queues, **connect_kwargs(queues, root, WORKER))
                   if queues else None)
    if on_cluster(url, count, **auth):
        from engine.cluster import shard_redis

        if queue_redis is None:
            raise Unavailable("the engine's Redis is a cluster: set MOOR_QUEUE_URL to a plain "
                              "Redis for the job queues (rq cannot run on Redis Cluster)")
        return shard_redis(url, keys.tag, **auth), keys, queue_redis
    return redis.Redis.from_url(url, **auth), keys, queue_redis


def serve(url: str, *, burst: bool = False, reconcile_first: bool = True) -> int:
    """Run this host's worker on the Redis at `url` until SIGTERM/SIGINT (or, burst, idle)."""
    # Supervisors are re-parented to us rather than to a slow-reaping PID 1.
    nsutil.set_child_subreaper(True)
    # Supervisors are forked from a small zygote, not from this process (it stops with us).
    from workers.proc import zygote

    zygote.start()
    root = data_root()
    engine_redis, keys, queues = _stores(url, root)
    context = HostContext(redis=engine_redis, redis_url=url, keys=keys, root=root,
                          host_id=host_id(), queue_redis=queues)
    os.makedirs(context.root, exist_ok=True)
    if context.host_id:  # host mode: beat and join before reconciling or taking jobs
        from workers.hostjoin import join

        join(context)
    worker = make_worker(context)
    level = os.environ.get("MOOR_LOG_LEVEL", "WARNING")
    if burst or not reconcile_first:
        if reconcile_first:
            reconcile(context)
        worker.work(burst=burst, logging_level=level, with_scheduler=False)
        return 0
    # Reconcile at start, then whenever the queue has been idle for a while: between
    # jobs, in this thread, so it never races a start or a teardown.
    interval = int(os.environ.get("MOOR_RECONCILE_INTERVAL", "60"))
    delay = _RETRY_FIRST
    while True:
        try:
            reconcile(context)
            saga.forget_bridges()  # idle: let the next start re-check the bridge and chains
            worker.work(burst=False, logging_level=level, with_scheduler=False,
                        max_idle_time=interval)
            delay = _RETRY_FIRST
        except (redis.RedisError, Unavailable) as exc:
            # Redis went away (killed, restarted, failed over): the containers keep
            # running under their supervisors, which retry their own reports. Wait and
            # come back as a new rq worker (the old registration may linger until its TTL);
            # reconcile then re-issues whatever the lost job owed.
            if getattr(worker, "_shutdown_requested_date", None) is not None:
                return 0
            log.warning("redis unavailable (%s); the worker retries in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_CAP)
            worker = make_worker(context)
            continue
        if getattr(worker, "_shutdown_requested_date", None) is not None:
            return 0  # SIGTERM/SIGINT: rq finished the job in hand and stopped
