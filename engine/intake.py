"""Read the reducer's inboxes for the single writer: merge, decode, fetch dedupe marks.

The inboxes are one stream per kind of writer (engine.keys.Inbox): the default control
principal's commands, each registered principal's own commands stream, the workers'
reports and the reducer's own requests. One XREADGROUP reads them all. Entries are
decided in stream-id order across the inboxes (ties: the inbox order), so one input
order exists however the entries were split: when a read returns a full batch from some
inbox, entries of the others past that batch's last id wait (the carry) until that inbox
has been read up to them. Nothing waiting is lost on a crash: it is pending in the group.

The reducer reads each group as a consumer of its own for each term (engine.keys.
consumer_name). Entries read by any other consumer and never acknowledged (a crashed or
deposed reducer read them; the write that acknowledges them did not land and never will)
are claimed by the leader at boot and again every `reclaim_ms` while it leads: a deposed
reducer still blocked in XREADGROUP can take entries after the new leader booted. Claimed
entries are read first (pending entries, by id), then new ones. Re-deciding one is safe:
dedupe by command id answers a command that was decided already. The same script returns
the registered principals, so a principal added while the reducer leads is read from its
next claim on.

An entry that does not decode, or came on an inbox of the wrong kind (a report on a
commands stream, a command on the reports stream: engine.core.admission.accepts), is not
decided: it goes to the quarantine stream with the reason, in the same write as its batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import redis as redislib

from commands.codec import CODEC, DecodeError
from commands.schema import Envelope
from engine import scripts
from engine.core.admission import ALLOW_ALL, Origin, Policy, accepts
from engine.keys import GROUP, Inbox, Keys, check_principal
from engine.lease import Deposed

__all__ = ["CommandReader", "Entry", "Prepared"]

log = logging.getLogger("moorage.reducer")

Entry = tuple[bytes, dict[bytes, bytes], Inbox]  # a stream entry: id, fields, its inbox
T = TypeVar("T")


class Prepared(NamedTuple):
    """A decoded batch, ready to decide without I/O.

    `decoded` holds (dedupe mark, envelope, command, origin) per entry to decide, or
    (entry id, None, reason, raw fields, stream key) per entry to quarantine; `acks` every
    entry id by stream; `done` the marks already decided (stored, plus the batch whose
    write is still in flight).
    """

    decoded: list[Any]
    acks: dict[str, list[Any]]
    done: set[str]


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _key(entry_id: bytes) -> tuple[int, bytes, int, bytes]:
    """Return a sort key in stream-id order without parsing numbers (lengths first)."""
    ms, _, seq = entry_id.partition(b"-")
    return len(ms), ms, len(seq), seq


class CommandReader:
    """Read batches of every inbox: pending entries first, then new ones, in id order."""

    def __init__(self, redis: Any, keys: Keys, batch: int, reclaim_ms: int = 200,
                 policy: Policy = ALLOW_ALL) -> None:
        self.redis = redis
        self.keys = keys
        self.batch = batch
        self.reclaim_ms = reclaim_ms
        self.policy = policy
        self.consumer = ""  # set for each term by start()
        self._epoch = ""
        self.inboxes: list[Inbox] = []
        self._by_key: dict[bytes, Inbox] = {}
        self._rank: dict[Inbox, int] = {}
        self.origins: dict[str, Origin] = {}
        self._principals: set[str] = set()
        self._read_pending = False
        self._after: dict[str, Any] = {}
        self._pending_bound: tuple[int, int] | None = None
        self._carry: list[Entry] = []
        self._more = False
        self._reclaimed_at = 0.0
        self._reclaim = redis.register_script(scripts.RECLAIM)
        for inbox in keys.builtin_inboxes():
            self._add(inbox)

    def _add(self, inbox: Inbox) -> None:
        self._rank[inbox] = len(self.inboxes)
        self.inboxes.append(inbox)
        self._by_key[inbox.key.encode()] = inbox
        self.origins[inbox.key] = Origin(inbox.principal, inbox.kind, self.policy)
        self._after[inbox.key] = "0"

    def _ensure_group(self, key: str) -> None:
        try:
            self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redislib.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self, consumer: str, epoch: int) -> int:
        """Read as `consumer` for the term of `epoch`: ensure the groups, claim what others
        left pending."""
        self.consumer = consumer
        self._epoch = str(epoch)
        for inbox in self.inboxes:
            self._ensure_group(inbox.key)
        claimed = self.reclaim()  # registers the principals first: every inbox is known
        self.reread_pending()
        return claimed

    def reclaim_due(self) -> bool:
        """Tell whether `reclaim_ms` passed since the last claim."""
        return time.monotonic() - self._reclaimed_at >= self.reclaim_ms / 1000

    def reclaim(self) -> int:
        """Claim every entry pending under another consumer, retire emptied consumers and
        pick up newly registered principals; return how many entries others held (then
        the pending entries are read again first). Call it only between batches. Raise
        Deposed when the epoch is no longer ours."""
        reply = self._reclaim(keys=[self.keys.epoch, self.keys.principals,
                                    *(inbox.key for inbox in self.inboxes)],
                              args=[GROUP, self.consumer, self._epoch])
        if reply == -1:
            raise Deposed()
        self._reclaimed_at = time.monotonic()
        self._register({m.decode() if isinstance(m, bytes) else m for m in reply[2]})
        claimed = int(reply[0])
        if claimed:
            self.reread_pending()
        return claimed

    def _register(self, members: set[str]) -> None:
        """Read the commands stream of every principal registered since the last look."""
        for name in sorted(members - self._principals):
            self._principals.add(name)
            try:
                inbox = self.keys.inbox(check_principal(name))
            except ValueError as exc:
                log.error("ignoring a registered principal: %s", exc)
                continue
            self._ensure_group(inbox.key)
            self._add(inbox)
            log.info("reading principal %s from %s", name, inbox.key)

    @property
    def reading_pending(self) -> bool:
        """Tell whether the next read is of pending entries (those are read by id)."""
        return self._read_pending

    @property
    def more(self) -> bool:
        """Tell whether the last read left entries behind (a full batch, or the carry)."""
        return self._more

    def reread_pending(self) -> None:
        """Read the consumer's pending entries (from the start) before any new ones.

        Pending entries past the point another inbox was delivered up to wait for that
        inbox's undelivered entries (read after the pending ones): the input order stays
        the id order across a crash or a claim.
        """
        self._read_pending = True
        self._carry = []
        for key in self._after:
            self._after[key] = "0"
        self._pending_bound = self._undelivered_bound()

    def _undelivered_bound(self) -> tuple[int, int] | None:
        """Return the lowest last-delivered id among inboxes that have entries past it."""
        pipe = self.redis.pipeline(transaction=False)
        for inbox in self.inboxes:
            pipe.xrevrange(inbox.key, count=1)
            pipe.xinfo_groups(inbox.key)
        replies = pipe.execute(raise_on_error=False)
        bound: tuple[int, int] | None = None
        for last, groups in zip(replies[::2], replies[1::2], strict=True):
            if not last or isinstance(last, Exception) or isinstance(groups, Exception):
                continue
            delivered = next((g["last-delivered-id"] for g in groups
                              if g["name"] in (GROUP, GROUP.encode())), b"0-0")
            delivered = _order(delivered if isinstance(delivered, bytes)
                               else delivered.encode())
            if _order(last[0][0]) > delivered:
                bound = delivered if bound is None else min(bound, delivered)
        return bound

    def read(self, block_ms: int | None = None) -> list[Entry]:
        """Read the next batch; wait up to block_ms for new entries (None: do not wait)."""
        group, consumer, count = GROUP, self.consumer, self.batch
        while self._read_pending:
            # Pending entries after the last ones read: a batch read ahead is not
            # acknowledged yet, and reading from "0" would return it a second time.
            reply = self.redis.xreadgroup(group, consumer, dict(self._after), count=count)
            entries = self.take(reply, pending=True)
            if entries:
                return entries
            if not any(found for _, found in reply or ()):  # all read (some may wait)
                self._read_pending = False
                self._pending_bound = None
        if self._carry:
            block_ms = None  # entries are waiting: only look for what may come before them
        reply = self.redis.xreadgroup(group, consumer,
                                      {inbox.key: ">" for inbox in self.inboxes},
                                      count=count, block=block_ms)
        return self.take(reply)

    def next_read(self) -> tuple[Any, ...]:
        """Return the XREADGROUP of the next new batch, to pipeline behind a write (its
        reply goes through take())."""
        keys = [inbox.key for inbox in self.inboxes]
        return ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch,
                "STREAMS", *keys, *(">" for _ in keys))

    def take(self, reply: Any, pending: bool = False) -> list[Entry]:
        """Turn an XREADGROUP reply into the entries to decide now, in id order; keep the
        ones past a full inbox's last entry for later (see the module docstring)."""
        runs: list[tuple[Inbox, list[Any]]] = []
        # Entries after `bound` may have company not read yet: a full inbox's next ones,
        # or (reading pending entries) entries never delivered.
        bound = self._pending_bound if pending else None
        for key, entries in reply or ():
            if not entries:
                continue
            inbox = self._by_key[key if isinstance(key, bytes) else key.encode()]
            if pending:
                self._after[inbox.key] = entries[-1][0]
            if len(entries) >= self.batch:
                last = _order(entries[-1][0])
                bound = last if bound is None else min(bound, last)
            runs.append((inbox, entries))
        carry = self._carry
        if not carry and len(runs) <= 1 and not (pending and bound is not None):
            # One inbox spoke: its order is the order (the common case, no sorting).
            self._more = bound is not None
            if not runs:
                return []
            inbox, entries = runs[0]
            return [(entry_id, fields, inbox) for entry_id, fields in entries]
        rank = self._rank
        merged = carry + [(entry_id, fields, inbox) for inbox, entries in runs
                          for entry_id, fields in entries]
        merged.sort(key=lambda item: (*_key(item[0]), rank[item[2]]))
        if bound is None:
            self._carry = []
            self._more = False
            return merged
        cut = next((i for i, item in enumerate(merged) if _order(item[0]) > bound),
                   len(merged))
        self._carry = merged[cut:]
        self._more = True
        return merged[:cut]

    def prepare(self, entries: list[Entry], in_flight: frozenset[str]) -> Prepared:
        """Decode a batch and fetch its dedupe marks (Redis; before any write is sent)."""
        acks: dict[str, list[Any]] = {}
        decoded: list[Any] = []
        marks: list[str] = []
        origins = self.origins
        ack_list: list[Any] = []
        last_key = ""
        for entry_id, fields, inbox in entries:
            key = inbox.key
            if key != last_key:
                ack_list = acks.setdefault(key, [])
                last_key = key
            ack_list.append(entry_id)
            if not fields:
                # Read from a pending list after the entry left the stream (XDEL, a trim):
                # nothing to decide, but it must be acknowledged or it stays owed forever.
                decoded.append((entry_id, None, "entry deleted before it was decided", {},
                                key))
                continue
            try:
                env = _decode_field(fields, b"env", CODEC.envelope)
                cmd = _decode_field(fields, b"cmd", CODEC.command)
                _check_envelope(env)
            except ValueError as exc:
                decoded.append((entry_id, None, _quarantine_reason(str(exc)), fields, key))
                continue
            refused = accepts(inbox.kind, cmd)
            if refused:
                decoded.append((entry_id, None, _quarantine_reason(
                    f"{refused} (principal {inbox.principal})"), fields, key))
                continue
            mark = inbox.mark(env.command_id)
            decoded.append((mark, env, cmd, origins[key]))
            marks.append(mark)
        done = set(in_flight)
        if marks:
            flags = self.redis.hmget(self.keys.done, marks)
            done.update(m for m, flag in zip(marks, flags, strict=True) if flag is not None)
        return Prepared(decoded, acks, done)


def _decode_field(fields: dict[bytes, bytes], name: bytes, decode: Callable[[bytes], T]) -> T:
    """Decode one field of an inbox entry; a failure names the field."""
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
