"""The single writer: fold the commands stream into events and state, one batch at a time.

Life of a reducer: standby until it takes the lease (which bumps the fencing epoch), then
boot (consumer group, snapshot check, outbox drain, owed work), then lead: read a batch
(pending entries first), decide each command against the in-memory World, and write the
whole batch with one Lua script that checks the epoch and each container's expected
version. A refused write means another writer took over (fenced: step down) or memory
and snapshot disagree (rebuild the snapshot from the events and redo the batch). Nothing
is acknowledged outside that atomic write, so a crash anywhere resumes with the same
outcome.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import msgspec
import redis as redislib

from commands.codec import CODEC, DecodeError
from commands.schema import Envelope
from engine import scripts
from engine.core.decider import apply_command
from engine.core.react import react, resume
from engine.core.state import World
from engine.eventlog import read_records
from engine.keys import CONSUMER, GROUP, Keys
from engine.outbox import JobOutbox, encode_job
from engine.snapshot import (
    encode_world_parts,
    fold_for_snapshot,
    load_world,
    queue_snapshot_writes,
)
from engine.timers import RestartTimers
from events import model as e

__all__ = ["Reducer"]

log = logging.getLogger("moorage.reducer")

# Events are leaf Structs: a type lookup replaces isinstance.
_WORLD_EVENTS = frozenset((e.NetworkDefined, e.ImageRegistered, e.ImageRemoved))
_ENC = msgspec.msgpack.Encoder()
T = TypeVar("T")


class _Redo(Exception):
    """The batch was refused for stale memory: rebuild and process it again."""


class _Deposed(Exception):
    """Another reducer holds the lease now."""


class Reducer:
    """One shard's single writer (run several: one leads, the others stand by)."""

    def __init__(self, redis: Any, keys: Keys, *, owner: str | None = None,
                 lease_ms: int = 3000, batch: int = 500, block_ms: int = 500,
                 reply_ttl: int = 300) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_ms = lease_ms
        self.batch = batch
        self.block_ms = block_ms
        self.reply_ttl = reply_ttl
        self.epoch: int | None = None
        self.world = World()
        self.timers = RestartTimers()
        self.outbox = JobOutbox(redis, keys)
        self._script = redis.register_script(scripts.WRITE)
        self._write = self._script  # one synchronous write (reloads the script if needed)
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)
        self._renewed_at = 0.0
        self._read_pending = True
        self._pending_after = "0"
        self._write_keys = [keys.events, keys.containers, keys.versions, keys.world, keys.done,
                            keys.commands, keys.epoch, keys.quarantine, keys.outbox]
        self._write_conn: Any = None  # the connection _send pipelines writes on

    # --- lease --------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it is free; on success bump the epoch and boot."""
        epoch = self._acquire(keys=[self.keys.lease, self.keys.epoch],
                              args=[self.owner, self.lease_ms])
        if not epoch:
            return False
        self.epoch = int(epoch)
        self._renewed_at = time.monotonic()
        log.info("reducer %s leads with epoch %s", self.owner, self.epoch)
        self.boot()
        return True

    def renew(self) -> None:
        """Extend the lease when a third of it has passed; raise _Deposed when lost."""
        now = time.monotonic()
        if now - self._renewed_at < self.lease_ms / 3000:
            return
        ok = self._renew(keys=[self.keys.lease, self.keys.epoch],
                         args=[self.owner, self.lease_ms, self.epoch])
        if not ok:
            raise _Deposed()
        self._renewed_at = now

    def release(self) -> None:
        """Give the lease up (clean shutdown) so a standby takes over at once."""
        if self.epoch is not None:
            self._release(keys=[self.keys.lease], args=[self.owner])
        self.epoch = None

    # --- boot -----------------------------------------------------------------------

    def boot(self) -> None:
        """Prepare to lead: group, snapshot (rebuilt if stale), outbox, owed work."""
        try:
            self.redis.xgroup_create(self.keys.commands, GROUP, id="0", mkstream=True)
        except redislib.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if self._write_conn is not None:
            # It may predate a Redis restart (the pool checks its own connections, this
            # one is ours): reconnect on the next write rather than fail it.
            self._write_conn.disconnect()
        self.world = self._load_or_rebuild()
        self.timers.load(self.world)
        self._reread_pending()
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
            pipe.watch(self.keys.epoch)
            if self.epoch is not None and pipe.get(self.keys.epoch) != str(self.epoch).encode():
                raise _Deposed()
            pipe.multi()
            queue_snapshot_writes(pipe, self.keys, world, versions, checkpoint)
            try:
                pipe.execute()
            except redislib.WatchError:
                raise _Deposed() from None
        return world

    # --- the fold -------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Stand by until the lease is ours, then lead until stopped or deposed."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                if self.epoch is None:
                    if not self.try_acquire():
                        stop.wait(self.lease_ms / 3000)
                        continue
                self.renew()
                self.timers.fire(self.redis, self.keys.commands)
                self.step()
            except _Deposed:
                log.warning("reducer %s lost the lease; standing by", self.owner)
                self.epoch = None
            except redislib.ConnectionError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                stop.wait(0.5)
                self.epoch = None  # re-acquire and re-boot: memory may be stale
        self.release()

    def step(self) -> int:
        """Read and fold what is waiting (one batch, or several back to back while more
        keep arriving); return how many entries it consumed. Every batch it decided is
        written (or refused) before it returns."""
        entries = self._read()
        if not entries:
            return 0
        try:
            return self._fold(entries)
        except _Redo:
            # The lead is ours, so memory and snapshot disagree: the snapshot (a cache)
            # was damaged, e.g. its versions hash lost. Reloading it would be refused
            # again forever; the events stream is the truth, so rebuild from it.
            self.world = self.rebuild()
            self.timers.load(self.world)
            self._reread_pending()
            return 0

    def _fold(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
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
        so run() can renew it; every batch read is written before step() returns.
        """
        folded = len(entries)
        batch = self._decide(*self._prepare(entries, frozenset()))
        # A short batch means the stream was drained when read: write at once rather than
        # spend a round trip reading ahead (keeps a lone command's latency low).
        drained = len(entries) < self.batch
        ahead = [] if drained or self._renewal_due() else self._read(block=False)
        while ahead:
            folded += len(ahead)
            prepared = self._prepare(ahead, batch.command_ids)
            # Pending entries are read by id (see _read), one batch at a time.
            read_next = not (self._read_pending or self._renewal_due())
            receive = self._send(batch, read_next)
            try:
                batch = self._decide(*prepared)
            finally:
                ahead = receive()  # a refused write raises here, whatever decide did
            if not read_next and not self._renewal_due():
                ahead = self._read(block=False)
        self._commit(batch)
        return folded

    def _renewal_due(self) -> bool:
        return time.monotonic() - self._renewed_at >= self.lease_ms / 3000

    def _reread_pending(self) -> None:
        """Read the consumer's pending entries (from the start) before any new ones."""
        self._read_pending = True
        self._pending_after = "0"

    def _read(self, block: bool = True) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if self._read_pending:
            # Pending entries from after the last batch read: a batch read ahead is not
            # acknowledged yet, and reading from "0" would return it a second time.
            reply = self.redis.xreadgroup(GROUP, CONSUMER,
                                          {self.keys.commands: self._pending_after},
                                          count=self.batch)
            entries = reply[0][1] if reply else []
            if entries:
                self._pending_after = entries[-1][0]
                return entries
            self._read_pending = False
        reply = self.redis.xreadgroup(GROUP, CONSUMER, {self.keys.commands: ">"},
                                      count=self.batch,
                                      # wake for the next restart timer, never block 0 (=forever)
                                      block=max(1, self.timers.wait_ms(self.block_ms))
                                      if block else None)
        return reply[0][1] if reply else []

    def _prepare(self, entries: list[tuple[bytes, dict[bytes, bytes]]],
                 in_flight: frozenset[str]) -> tuple[list[tuple[bytes, Any]], list[Any],
                                                     set[str]]:
        """Decode a batch and fetch its dedupe marks (Redis; before any write is sent)."""
        acks: list[Any] = []
        decoded: list[Any] = []
        ids: list[str] = []
        for entry_id, fields in entries:
            acks.append(entry_id)
            try:
                env = _decode_field(fields, b"env", CODEC.envelope)
                cmd = _decode_field(fields, b"cmd", CODEC.command)
                _check_envelope(env)
            except ValueError as exc:
                decoded.append((entry_id, None, _quarantine_reason(str(exc)), fields))
                continue
            decoded.append((entry_id, env, cmd))
            ids.append(env.command_id)
        done = set(in_flight)
        if ids:
            flags = self.redis.hmget(self.keys.done, ids)
            done.update(cid for cid, flag in zip(ids, flags, strict=True) if flag is not None)
        return decoded, acks, done

    def _commit(self, batch: _Batch) -> None:
        """Write one decided batch (the single atomic write), then hand its jobs to rq."""
        self._written(self._write(keys=self._write_keys, args=batch.argv))

    def _send(self, batch: _Batch, read_next: bool
              ) -> Callable[[], list[tuple[bytes, dict[bytes, bytes]]]]:
        """Send one batch's write (the script _commit runs) without waiting, and with
        read_next the next batch's read behind it; return the function that reads the
        replies, acts on the write's like _commit, and returns the entries read."""
        conn = self._write_conn
        if conn is None:
            conn = self._write_conn = self.redis.connection_pool.make_connection()
        keys = self._write_keys
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", self._script.sha, len(keys), *keys, *batch.argv)]
        if read_next:
            commands.append(("XREADGROUP", "GROUP", GROUP, CONSUMER, "COUNT", self.batch,
                             "STREAMS", self.keys.commands, ">"))
        try:
            conn.send_packed_command(conn.pack_commands(commands))
        except BaseException:
            conn.disconnect()
            raise

        def receive() -> list[tuple[bytes, dict[bytes, bytes]]]:
            try:
                try:
                    result = self.redis.parse_response(conn, "EVALSHA")
                except redislib.exceptions.NoScriptError as exc:
                    result = exc  # nothing ran; run it below, once the read is consumed
                reply = self.redis.parse_response(conn, "XREADGROUP") if read_next else None
            except BaseException:
                conn.disconnect()  # never leave a reply unread on the connection
                raise
            if isinstance(result, redislib.exceptions.NoScriptError):
                # Redis restarted or flushed its scripts: run it the loading way.
                result = self._write(keys=keys, args=batch.argv)
            self._written(result)
            return reply[0][1] if reply else []
        return receive

    def _written(self, result: Any) -> None:
        status = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if status == "FENCED":
            raise _Deposed()
        if status != "OK":
            log.warning("write refused (%s): rebuilding the snapshot from the events", result)
            raise _Redo()
        self.outbox.drain(self.epoch)

    def _decide(self, decoded: list[Any], acks: list[Any], done: set[str]) -> _Batch:
        """Decide a prepared batch against memory and build its write's ARGV (no I/O)."""
        world = self.world
        encode = _ENC.encode
        reply_key = self.keys.reply
        # Flat ARGV sections (see scripts.WRITE): a few list appends per command, and
        # per-container facts gathered once per batch in `touched`.
        commands: list[Any] = []
        replies: list[Any] = []
        quarantine: list[Any] = []
        jobs: list[bytes] = []
        # Each container the batch touches, once: its version before the batch (what the
        # script checks) and after it. Every command records at least one event.
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        world_changed = False
        seen: set[str] = set()
        for item in decoded:
            env = item[1]
            if env is None:
                quarantine += (item[0], item[2], _raw(item[3]))
                continue
            command_id = env.command_id
            # Fire-and-forget senders (worker reports) get no wake-up list: nobody pops it.
            if command_id in done or command_id in seen:
                if env.reply:  # a duplicate: answer with the stored result again
                    replies += (command_id, reply_key(command_id))
                continue
            seen.add(command_id)
            cid, expected_version, records, result = apply_command(world, env, item[2])
            commands += (command_id, encode(result), len(records))
            commands += map(encode, records)
            if env.reply:
                replies += (command_id, reply_key(command_id))
            self.timers.observe(records)
            for record in records:
                if type(record.event) in _WORLD_EVENTS:
                    world_changed = True
                found = react(world, record)
                if found:
                    jobs += map(encode_job, found)
            # No container before nor after (e.g. a refused create): nothing to check.
            if cid and (expected_version >= 0 or cid in world.containers):
                prior = after.get(cid)
                if prior is None:
                    before[cid] = expected_version
                elif prior != expected_version:
                    raise _Redo()  # memory disagrees with itself: never write that
                after[cid] = result.version
        # The version each touched container must have now, then its version and snapshot
        # at the end of the batch (encoded once, however often the batch changed it).
        versions: list[Any] = []
        snapshots: list[Any] = []
        deleted: list[str] = []
        containers = world.containers
        for cid, version in after.items():
            versions += (cid, version)
            ctr = containers.get(cid)
            if ctr is None:
                deleted.append(cid)  # destroyed: the version stays as a tombstone
            else:
                snapshots += (cid, encode(ctr))
        argv: list[Any] = [self.epoch, GROUP, self.reply_ttl,
                           encode_world_parts(world) if world_changed else ""]
        for section in (acks, list(before), list(before.values()), versions, snapshots,
                        deleted, jobs):
            argv.append(len(section))
            argv += section
        argv.append(len(seen))  # the commands section counts commands, not items
        argv += commands
        for section in (replies, quarantine):
            argv.append(len(section))
            argv += section
        return _Batch(argv, frozenset(seen))


class _Batch(NamedTuple):
    """A decided batch: its write's ARGV and the command ids it answers."""

    argv: list[Any]
    command_ids: frozenset[str]


def _decode_field(fields: dict[bytes, bytes], name: bytes, decode: Callable[[bytes], T]) -> T:
    """Decode one field of a commands-stream entry; a failure names the field."""
    raw = fields.get(name)
    if raw is None:
        raise ValueError(f"missing field {name.decode()!r}")
    try:
        return decode(raw)
    except (ValueError, *DecodeError) as exc:  # UnicodeDecodeError is a ValueError too
        raise ValueError(f"{name.decode()}: {exc}") from None


def _check_envelope(env: Envelope) -> None:
    if not env.command_id:
        raise ValueError("envelope: empty command_id")
    if env.issued_at <= 0:
        raise ValueError("envelope: issued_at must be a positive unix time in ns")


def _quarantine_reason(reason: str) -> str:
    return reason[:500]


def _raw(fields: dict[bytes, bytes]) -> bytes:
    return _ENC.encode([[k, v] for k, v in fields.items()])
