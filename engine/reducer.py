"""Run the single writer: fold the inbox streams into events and state, batch by batch.

Life of a reducer: standby until it takes the lease (which bumps the fencing epoch), then
boot (consumer group, snapshot check, claim what earlier readers left pending, outbox
drain, owed work), then lead: read a batch (pending entries first), decide each command
against the in-memory World, and write the whole batch with one Lua script that checks the
epoch and each container's expected version. A refused write means another writer took
over (fenced: step down) or memory and snapshot disagree (rebuild the snapshot from the
events and redo the batch). Nothing is acknowledged outside that atomic write, so a crash
anywhere resumes with the same outcome. Any other failure (Redis refusing a command, a
script error, rq) steps down too and retries with back-off: memory is thrown away and the
next term, with a new epoch, boots from what Redis holds.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

import redis as redislib

from engine.batch import Batch, Redo, decide_batch
from engine.compact import Compaction
from engine.core.admission import ALLOW_ALL, Policy
from engine.core.react import resume
from engine.core.state import World
from engine.errors import MoorError
from engine.eventlog import read_records
from engine.hostwatch import HostWatch
from engine.intake import CommandReader, Entry, Prepared
from engine.keys import Keys, consumer_name
from engine.lease import Deposed, Lease
from engine.metrics import ReducerMetrics
from engine.outbox import JobOutbox
from engine.snapshot import fold_for_snapshot, load_world, queue_snapshot_writes
from engine.timers import RestartTimers
from engine.writer import BatchWriter

__all__ = ["Backoff", "Reducer"]

log = logging.getLogger("moorage.reducer")


class Backoff:
    """Delays between retries: doubling from `first` up to `cap` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """Return the delay before the next retry, and double the one after it."""
        delay = self._next
        self._next = min(self.cap, delay * 2)
        return delay

    def reset(self) -> None:
        """Start over from `first` (the last attempt succeeded)."""
        self._next = self.first


class Reducer:
    """One shard's single writer (run several: one leads, the others stand by).

    Its parts: `lease` (the lease and the fencing epoch), `intake` (reading and decoding
    the inbox streams), engine.batch (deciding a batch, no I/O) and `writer` (the
    fenced write and the hand-off of its jobs to rq). `policy` is the admission policy
    the decider applies (engine.core.admission; default: allow everything).
    `queue_redis`: where the rq queues live when not on `redis` (a Redis Cluster shard).
    `sweeper`: with several shards, the engine.reservations.ReservationSweeper that
    releases names this shard reserved for containers that no longer carry them.
    """

    def __init__(self, redis: Any, keys: Keys, *, owner: str | None = None,
                 lease_ms: int = 3000, batch: int = 500, block_ms: int = 500,
                 reply_ttl: int = 300, reclaim_ms: int = 200,
                 policy: Policy = ALLOW_ALL, queue_redis: Any = None,
                 sweeper: Any = None) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_ms = lease_ms
        self.batch = batch
        self.block_ms = block_ms
        self.reply_ttl = reply_ttl
        self.world = World()
        self.timers = RestartTimers()
        self.compaction = Compaction()
        self.outbox = JobOutbox(redis, keys, queue_redis)
        self.lease = Lease(redis, keys, self.owner, lease_ms)
        self.intake = CommandReader(redis, keys, batch, reclaim_ms, policy)
        self.writer = BatchWriter(redis, keys, self.outbox)
        self.sweeper = sweeper
        self.hostwatch = HostWatch()  # hosts' leases (engine.hostwatch): idle without hosts
        self.metrics = ReducerMetrics()
        self.metrics.watch(self)

    @property
    def epoch(self) -> int | None:
        """The fencing epoch while this reducer leads, else None."""
        return self.lease.epoch

    # --- lease --------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it is free; on success bump the epoch and boot."""
        if not self.lease.acquire():
            return False
        log.info("reducer %s leads with epoch %s", self.owner, self.epoch)
        self.boot()
        return True

    def renew(self) -> None:
        """Extend the lease when a third of it has passed; raise Deposed when lost."""
        self.lease.renew()

    def release(self) -> None:
        """Give the lease up (clean shutdown) so a standby takes over at once."""
        self.lease.release()

    # --- boot -----------------------------------------------------------------------

    def boot(self) -> None:
        """Prepare to lead: snapshot (rebuilt if stale), groups and the entries others
        left pending, outbox, owed work."""
        self.writer.reset()
        self.world = self._load_or_rebuild()
        self.timers.load(self.world)
        if self.epoch is None:
            raise Deposed()  # boot only under the lease
        self.intake.start(consumer_name(self.owner, self.epoch), self.epoch)
        self.outbox.drain(self.epoch)
        self.outbox.enqueue(resume(self.world))

    def _load_or_rebuild(self) -> World:
        world, checkpoint = load_world(self.redis, self.keys)
        tail = self.redis.xrevrange(self.keys.events, count=1)
        last = tail[0][0].decode() if tail else "0-0"
        count = self.redis.hget(self.keys.world, "count")
        intact = count is None or int(count) == len(world.containers)
        if last == checkpoint and intact:
            return world
        log.warning("snapshot at %s but events end at %s: rebuilding from the events",
                    checkpoint, last)
        return self.rebuild()

    def rebuild(self) -> World:
        """Fold the whole events stream and rewrite the snapshot (it is only a cache)."""

        def skipped(bad: object) -> None:
            log.error("rebuild skipped an undecodable events entry: %s", bad)

        world, versions, checkpoint = fold_for_snapshot(
            read_records(self.redis, self.keys, on_bad=skipped))
        with self.redis.pipeline(transaction=True) as pipe:
            # Fenced like every write: a deposed reducer must not overwrite the snapshot.
            self.lease.fence(pipe)
            pipe.multi()
            queue_snapshot_writes(pipe, self.keys, world, versions, checkpoint)
            try:
                pipe.execute()
            except redislib.WatchError:
                raise Deposed() from None
        return world

    # --- the fold -------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Stand by until the lease is ours, then lead until stopped; never give up.

        A failure steps down and retries after a back-off (doubling, capped): a reducer
        that exits stops the engine (`moor up` ends with it), while Redis refusing a
        command (READONLY after a failover, OOM, a script error) or rq failing usually
        passes. Stepping down is what keeps fencing simple: whether the failed write
        landed is unknown, so memory is thrown away and the next term boots with a new
        epoch from what Redis holds, fencing any write of this term still in flight.
        """
        server = self._serve_metrics()
        try:
            self._lead(stop or threading.Event())
        finally:
            if server is not None:
                server.close()

    def _serve_metrics(self) -> Any:
        """Serve /metrics while run() runs, where moor up or MOOR_METRICS_ADDR says.

        A metrics endpoint that cannot start is logged, never fatal: the fold matters more.
        """
        from engine import metrics_http
        from engine.config import metrics_addr, metrics_fd

        try:
            fd = metrics_fd()
            addr = metrics_addr(default=None)
            if fd is not None:
                sock = metrics_http.inherited(fd)
            elif addr is not None:
                sock = metrics_http.listen(*addr)
            else:
                return None
            return metrics_http.serve(sock, self.metrics.registry)
        except (OSError, ValueError, MoorError) as exc:  # MoorError: a bad MOOR_METRICS_ADDR
            log.error("metrics not served: %s", exc)
            return None

    def _lead(self, stop: threading.Event) -> None:
        """run()'s loop: lead, or stand by, until stopped."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                if self.epoch is None:
                    if not self.try_acquire():
                        backoff.reset()  # Redis answered: another reducer leads
                        stop.wait(self.lease_ms / 3000)
                        continue
                self.renew()
                self.timers.fire(self.redis, self.keys.internal)
                self.hostwatch.tick(self.redis, self.keys, self.world)
                self.step()
                self.compaction.tick(self.redis, self.keys, self.epoch, self.intake.inboxes)
                if self.sweeper is not None:
                    self.sweeper.tick(self.world, self.redis, self.keys)
                backoff.reset()
            except Deposed:
                log.warning("reducer %s lost the lease; standing by", self.owner)
                self.compaction.forget()
                self.lease.drop()
            except (redislib.ConnectionError, redislib.TimeoutError) as exc:
                delay = backoff.next()
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                self.lease.drop()  # re-acquire and re-boot: memory may be stale
                stop.wait(delay)
            except Exception as exc:  # any other failure: step down, retry
                delay = backoff.next()
                # A Redis refusal explains itself; anything else may be a bug: traceback.
                log.warning("reducer %s failed (%s: %s); stepping down, retrying in %.1fs",
                            self.owner, type(exc).__name__, exc, delay,
                            exc_info=not isinstance(exc, redislib.RedisError))
                self._step_down()
                stop.wait(delay)
        self._step_down()

    def _step_down(self) -> None:
        """Give the lease up if Redis lets us; forget the epoch either way.

        Released, the lease is re-taken at once (by us or a standby) with a new epoch; if
        Redis refuses the release too, the lease lapses after lease_ms.
        """
        self.compaction.forget()  # noted from a batch whose write may not have landed
        try:
            self.release()
        except redislib.RedisError as exc:
            log.warning("could not release the lease (%s); it lapses by itself", exc)
        self.lease.drop()

    def step(self) -> int:
        """Read and fold what is waiting (one batch, or several back to back while more
        keep arriving); return how many entries it consumed. Every batch it decided is
        written (or refused) before it returns."""
        # Between batches (nothing read is unwritten), take over what other consumers
        # left pending: a deposed reducer's blocking read can take entries after this
        # term's boot. Claimed entries are read before new ones. Every reclaim_ms while
        # entries keep coming, and whenever the stream is idle (it costs nothing then).
        intake = self.intake
        if intake.reclaim_due():
            intake.reclaim()
        # Wake for the next restart timer; never block 0 (= forever).
        entries = intake.read(max(1, self.timers.wait_ms(self.block_ms)))
        if not entries:
            if not intake.reclaim():
                return 0
            entries = intake.read()
            if not entries:
                return 0
        try:
            return self._fold(entries)
        except Redo:
            # The lead is ours, so memory and snapshot disagree: the snapshot (a cache)
            # was damaged, e.g. its versions hash lost. Reloading it would be refused
            # again forever; the events stream is the truth, so rebuild from it.
            self.world = self.rebuild()
            self.timers.load(self.world)
            self.intake.reread_pending()
            return 0

    def _fold(self, entries: list[Entry]) -> int:
        """Decide and write batches; while one batch's write runs, decide the next.

        Redis runs one command at a time and Python decides on one core, so the two are
        overlapped on one connection: batch k's write is sent without waiting, with the
        read of the batch after next queued behind it, and batch k+1 is decided while
        Redis runs both; then both replies are read. No second thread: it would fight the
        decide for the GIL. Deciding ahead is safe: a batch is only memory until its
        write lands, and a refused write (fenced or stale) throws all memory away (stand
        by, or rebuild) with every unwritten entry still pending. A batch's dedupe marks
        are fetched once the write before it has landed; the commands of the batch still
        in flight count as done. Reading ahead stops when the lease is due for renewal,
        so run() can renew it; every batch decided is written before step() returns
        (entries the intake holds back for the id order stay pending: engine.intake).
        """
        intake, writer, lease, written = self.intake, self.writer, self.lease, self.metrics.written
        clock = time.perf_counter
        folded = len(entries)
        prepared = intake.prepare(entries, frozenset())
        began = clock()  # a batch's fold latency: from its decide to its write landed
        batch = self._decide(prepared)
        # Short batches mean the inboxes were drained when read: write at once rather
        # than spend a round trip reading ahead (keeps a lone command's latency low).
        drained = not intake.more
        ahead = [] if drained or lease.renewal_due() else intake.read()
        while ahead:
            folded += len(ahead)
            prepared = intake.prepare(ahead, batch.command_ids)
            # Pending entries are read by id (see CommandReader.read), one batch at a time.
            read_next = not (intake.reading_pending or lease.renewal_due())
            receive = writer.send(batch, intake.next_read() if read_next else None)
            began_next = clock()
            try:
                decided = self._decide(prepared)
            finally:
                reply = receive()  # a refused write raises here, whatever decide did
                written(batch, clock() - began)  # landed (a refusal raised above)
            batch, began = decided, began_next
            ahead = intake.take(reply) if read_next else []
            if not read_next and not lease.renewal_due():
                ahead = intake.read()
        writer.commit(batch)
        written(batch, clock() - began)
        return folded

    def _decide(self, prepared: Prepared) -> Batch:
        """Decide a prepared batch against memory (no I/O)."""
        return decide_batch(prepared, self.world, self.timers, self.keys, epoch=self.epoch,
                            reply_ttl=self.reply_ttl, observers=(self.compaction.observe,))
