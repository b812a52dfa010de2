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
from typing import Any, TypeVar

import msgspec
import redis as redislib

from commands.schema import Envelope
from engine import scripts
from engine.decider import Outcome, apply_command
from engine.jobs import JobOutbox, encode_job
from engine.keys import CONSUMER, GROUP, Keys
from engine.react import react, resume
from engine.snapshot import (
    encode_world_parts,
    fold_for_snapshot,
    load_world,
    queue_snapshot_writes,
)
from engine.state import World
from events import model as e
from events.codec import CODEC, DecodeError

__all__ = ["Reducer"]

log = logging.getLogger("moorage.reducer")

_WORLD_EVENTS = (e.NetworkDefined, e.ImageRegistered, e.ImageRemoved)
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
        self.outbox = JobOutbox(redis, keys)
        self._write = redis.register_script(scripts.WRITE)
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)
        self._renewed_at = 0.0
        self._read_pending = True

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
        self.world = self._load_or_rebuild()
        self._read_pending = True
        self.outbox.drain()
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
        from projections.stream import read_records  # the read side owns stream paging

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
        """Read and fold one batch; return how many entries it consumed."""
        entries = self._read()
        if not entries:
            return 0
        try:
            self._fold_batch(entries)
        except _Redo:
            # The lead is ours, so memory and snapshot disagree: the snapshot (a cache)
            # was damaged, e.g. its versions hash lost. Reloading it would be refused
            # again forever; the events stream is the truth, so rebuild from it.
            self.world = self.rebuild()
            self._read_pending = True
            return 0
        self.outbox.drain()
        return len(entries)

    def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if self._read_pending:
            reply = self.redis.xreadgroup(GROUP, CONSUMER, {self.keys.commands: "0"},
                                          count=self.batch)
            entries = reply[0][1] if reply else []
            if entries:
                return entries
            self._read_pending = False
        reply = self.redis.xreadgroup(GROUP, CONSUMER, {self.keys.commands: ">"},
                                      count=self.batch, block=self.block_ms)
        return reply[0][1] if reply else []

    def _fold_batch(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        decoded: list[tuple[bytes, Any, Any] | tuple[bytes, str, dict[bytes, bytes]]] = []
        ids: list[str] = []
        for entry_id, fields in entries:
            try:
                env = _decode_field(fields, b"env", CODEC.envelope)
                cmd = _decode_field(fields, b"cmd", CODEC.command)
                _check_envelope(env)
            except ValueError as exc:
                decoded.append((entry_id, "Q", _quarantine_reason(str(exc)), fields))
                continue
            decoded.append((entry_id, env, cmd))
            ids.append(env.command_id)
        done = set()
        if ids:
            flags = self.redis.hmget(self.keys.done, ids)
            done = {cid for cid, flag in zip(ids, flags, strict=True) if flag is not None}
        argv: list[Any] = [self.epoch, GROUP, self.reply_ttl]
        seen: set[str] = set()
        for item in decoded:
            entry_id = item[0]
            if item[1] == "Q":
                argv += ["Q", entry_id, item[2], _raw(item[3])]
                continue
            env, cmd = item[1], item[2]
            # Fire-and-forget senders (worker reports) get no wake-up list: nobody pops it.
            reply = self.keys.reply(env.command_id) if env.reply else ""
            if env.command_id in done or env.command_id in seen:
                argv += ["D", entry_id, env.command_id, reply]
                continue
            seen.add(env.command_id)
            outcome = apply_command(self.world, env, cmd)
            argv += self._command_op(entry_id, env, outcome, reply)
        result = self._write(keys=[self.keys.events, self.keys.containers, self.keys.versions,
                                   self.keys.world, self.keys.done, self.keys.commands,
                                   self.keys.epoch, self.keys.quarantine, self.keys.outbox],
                             args=argv)
        status = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if status == "FENCED":
            raise _Deposed()
        if status != "OK":
            log.warning("write refused (%s): rebuilding the snapshot from the events", result)
            raise _Redo()

    def _command_op(self, entry_id: bytes, env: Envelope, outcome: Outcome,
                    reply: str) -> list[Any]:
        cid = outcome.container_id
        world = self.world
        ctr = world.containers.get(cid) if cid else None
        if not cid or (outcome.expected_version < 0 and ctr is None):
            expected, new, snap = "", "", ""
        else:
            expected = str(outcome.expected_version)
            new = str(outcome.result.version)
            snap = _ENC.encode(ctr) if ctr is not None else "-"
        events = [CODEC.encode(r) for r in outcome.records]
        parts = ""
        jobs: list[bytes] = []
        for record in outcome.records:
            if isinstance(record.event, _WORLD_EVENTS):
                parts = encode_world_parts(world)
            jobs.extend(encode_job(job) for job in react(world, record))
        return ["C", entry_id, env.command_id, cid, expected, new, snap,
                CODEC.encode(outcome.result), reply, len(events), *events, parts,
                len(jobs), *jobs]


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
