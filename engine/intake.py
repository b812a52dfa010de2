"""Read the commands stream for the single writer: decode each batch, fetch its dedupe marks.

The reducer reads the group as a consumer of its own for each term (engine.keys.
consumer_name). Entries read by any other consumer and never acknowledged (a crashed or
deposed reducer read them; the write that acknowledges them did not land and never will)
are claimed by the leader at boot and again every `reclaim_ms` while it leads: a deposed
reducer still blocked in XREADGROUP can take entries after the new leader booted. Claimed
entries are read first (pending entries, by id), then new ones. Re-deciding one is safe:
dedupe by command id answers a command that was decided already.

An entry that does not decode is not dropped: it goes to the quarantine stream with the
reason, in the same write as the batch it came in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from commands.codec import CODEC, DecodeError
from commands.schema import Envelope
from engine import scripts
from engine.keys import GROUP, Keys
from engine.lease import Deposed

__all__ = ["CommandReader", "Entry", "Prepared"]

Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: id and fields
T = TypeVar("T")


class Prepared(NamedTuple):
    """A decoded batch, ready to decide without I/O.

    `decoded` holds (entry id, envelope, command) per entry, or (entry id, None, reason,
    raw fields) for one to quarantine; `acks` every entry id; `done` the command ids
    already decided (stored marks, plus the batch whose write is still in flight).
    """

    decoded: list[Any]
    acks: list[Any]
    done: set[str]


class CommandReader:
    """Read batches of the commands stream: pending entries first, then new ones."""

    def __init__(self, redis: Any, keys: Keys, batch: int, reclaim_ms: int = 200) -> None:
        self.redis = redis
        self.keys = keys
        self.batch = batch
        self.reclaim_ms = reclaim_ms
        self.consumer = ""  # set for each term by start()
        self._epoch = ""
        self._read_pending = False
        self._pending_after = "0"
        self._reclaimed_at = 0.0
        self._reclaim = redis.register_script(scripts.RECLAIM)

    def start(self, consumer: str, epoch: int) -> int:
        """Read as `consumer` for the term of `epoch`: claim what others left pending."""
        self.consumer = consumer
        self._epoch = str(epoch)
        self._read_pending = False
        return self.reclaim()

    def reclaim_due(self) -> bool:
        """Tell whether `reclaim_ms` passed since the last claim."""
        return time.monotonic() - self._reclaimed_at >= self.reclaim_ms / 1000

    def reclaim(self) -> int:
        """Claim every entry pending under another consumer and retire emptied consumers;
        return how many were claimed. Call it only between batches: it takes this
        consumer's own unwritten entries too (harmless: they are read again first).
        Raise Deposed when the epoch is no longer ours."""
        reply = self._reclaim(keys=[self.keys.commands, self.keys.epoch],
                              args=[GROUP, self.consumer, self._epoch])
        if reply == -1:
            raise Deposed()
        self._reclaimed_at = time.monotonic()
        claimed = int(reply[0])
        if claimed:
            self.reread_pending()
        return claimed

    @property
    def reading_pending(self) -> bool:
        """Tell whether the next read is of pending entries (those are read by id)."""
        return self._read_pending

    def reread_pending(self) -> None:
        """Read the consumer's pending entries (from the start) before any new ones."""
        self._read_pending = True
        self._pending_after = "0"

    def read(self, block_ms: int | None = None) -> list[Entry]:
        """Read the next batch; wait up to block_ms for new entries (None: do not wait)."""
        if self._read_pending:
            # Pending entries from after the last batch read: a batch read ahead is not
            # acknowledged yet, and reading from "0" would return it a second time.
            reply = self.redis.xreadgroup(GROUP, self.consumer,
                                          {self.keys.commands: self._pending_after},
                                          count=self.batch)
            entries = reply[0][1] if reply else []
            if entries:
                self._pending_after = entries[-1][0]
                return entries
            self._read_pending = False
        reply = self.redis.xreadgroup(GROUP, self.consumer, {self.keys.commands: ">"},
                                      count=self.batch, block=block_ms)
        return reply[0][1] if reply else []

    def next_read(self) -> tuple[Any, ...]:
        """Return the XREADGROUP of the next new batch, to pipeline behind a write."""
        return ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch,
                "STREAMS", self.keys.commands, ">")

    def prepare(self, entries: list[Entry], in_flight: frozenset[str]) -> Prepared:
        """Decode a batch and fetch its dedupe marks (Redis; before any write is sent)."""
        acks: list[Any] = []
        decoded: list[Any] = []
        ids: list[str] = []
        for entry_id, fields in entries:
            acks.append(entry_id)
            if not fields:
                # Read from a pending list after the entry left the stream (XDEL, a trim):
                # nothing to decide, but it must be acknowledged or it stays owed forever.
                decoded.append((entry_id, None, "entry deleted before it was decided", {}))
                continue
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
        return Prepared(decoded, acks, done)


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
