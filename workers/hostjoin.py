"""Join the engine as a host, and keep the host's heartbeat lease alive.

`moor worker --host-id ID` (MOOR_HOST_ID) runs in host mode: before it takes jobs it sets
its lease (`Keys.host_lease`, SET PX) and joins (`JoinHost`: labels, capacity, the bridge
its slice of the default network goes on), waiting until the engine recorded it. A thread
then renews the lease every third of its length for as long as the worker runs; the
reducer's host watch records the host lost when the lease lapses, and back when it beats
again. Without a host id none of this runs (single-host mode).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis as redislib

from commands import schema as c
from engine.config import default_network, host_capacity, host_labels, host_lease_ms
from engine.errors import MoorError, Timeout
from workers.context import HostContext

__all__ = ["Heartbeat", "join"]

log = logging.getLogger("moorage.worker")

_RETRY = 1.0  # seconds between join attempts the engine refused or did not answer


class Heartbeat:
    """Renew a host's lease every third of its length in a daemon thread."""

    def __init__(self, redis: Any, key: str, lease_ms: int, value: str) -> None:
        self.redis = redis
        self.key = key
        self.lease_ms = lease_ms
        self.value = value
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="host-heartbeat", daemon=True)

    def beat(self) -> None:
        """Set the lease once (raises what Redis raises)."""
        self.redis.set(self.key, self.value, px=self.lease_ms)

    def start(self) -> None:
        self.thread.start()

    def stop(self, release: bool = False) -> None:
        """Stop renewing; with `release`, delete the lease (the host is lost at once)."""
        self.stopped.set()
        self.thread.join(timeout=5)
        if release:
            try:
                self.redis.delete(self.key)
            except redislib.RedisError as exc:
                log.warning("could not release the host lease: %s", exc)

    def _run(self) -> None:
        while not self.stopped.wait(self.lease_ms / 3000):
            try:
                self.beat()
            except redislib.RedisError as exc:  # Redis away: the lease may lapse; retry
                log.warning("host heartbeat failed: %s", exc)


def join(ctx: HostContext, lease_ms: int | None = None) -> Heartbeat:
    """Beat, then join as `ctx.host_id` and wait until recorded; return the running beat.

    The first beat precedes the join, so the host watch never sees a joined host without
    a lease. A refusal (no default network defined yet) or no answer is retried.
    """
    lease_ms = lease_ms or host_lease_ms()
    beat = Heartbeat(ctx.redis, ctx.keys.host_lease(ctx.host_id), lease_ms,
                     f"{ctx.host}:{time.time_ns()}")
    cmd = c.JoinHost(host=ctx.host_id, labels=host_labels(), capacity=host_capacity(),
                     bridge=default_network().bridge)
    client = ctx.client
    while True:
        try:
            beat.beat()
            command_id = client.send(cmd, reply=True,
                                     command_id=f"join-{ctx.host_id}-{time.time_ns()}")
            result = client.wait_result(command_id).result
        except Timeout:
            log.warning("host %s: no answer to its join yet; retrying", ctx.host_id)
            continue
        except MoorError as err:  # Redis unreachable
            log.warning("host %s: cannot join (%s); retrying", ctx.host_id, err.message)
        except redislib.RedisError as exc:
            log.warning("host %s: cannot beat (%s); retrying", ctx.host_id, exc)
        else:
            if result.ok:
                break
            log.warning("host %s: join refused (%s); retrying", ctx.host_id, result.message)
        time.sleep(_RETRY)
    beat.start()
    log.info("joined as host %s", ctx.host_id)
    return beat
