"""Compact the inbox streams and the dedupe marks below a recorded cut-off.

The events stream is the journal and is never trimmed. The inbox streams (commands,
reports, the reducer's own) are only inboxes: once an entry was decided and
acknowledged, the facts it produced live in the journal, and what remains of it is its
dedupe mark in `done`. Both are kept for a retention window (the idempotency window: a
command re-sent within it is answered with its first result; later it is decided
again), then dropped here.

Only entries that are both older than the cut-off and settled go: below the oldest
pending entry of the group and below the group's last delivered id, so nothing that a
reducer still owes an answer is ever trimmed. Each page is dropped by a fenced script:
a deposed leader cannot trim.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis as redislib

from commands import schema as c
from commands.codec import CODEC, DecodeError
from commands.options import parse_duration_ns
from engine.keys import GROUP, Inbox, Keys
from events import model as e

__all__ = ["COMPACT_PAGE", "Compacted", "Compaction", "compact", "retention_ms", "settled_bound"]

log = logging.getLogger("moorage.reducer")

DEFAULT_RETENTION_MS = 24 * 3600 * 1000  # the idempotency window (MOOR_DEDUPE_RETENTION)
DEFAULT_INTERVAL_S = 3600.0  # how often the leader asks for a compaction itself

COMPACT_PAGE = 1000

# KEYS[1] commands  KEYS[2] done  KEYS[3] epoch
# ARGV[1] epoch  ARGV[2] MINID (entries below it go)  ARGV[3..] command ids to forget
# Returns the number of entries trimmed, or -1 when fenced.
_DROP = r"""
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
for i = 3, #ARGV, 500 do
  redis.call('HDEL', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
"""


class Compacted(NamedTuple):
    """What one compaction dropped."""

    entries: int  # commands stream entries trimmed
    marks: int  # dedupe marks forgotten
    bound: str  # entries below this id are gone


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def settled_bound(redis: Any, stream: str, cutoff_ms: int) -> str:
    """Return the lowest id of an inbox stream that must stay: nothing at or above it is
    trimmed."""
    bound = (cutoff_ms, 0)
    pending = redis.xpending(stream, GROUP)
    if pending and pending.get("pending"):
        bound = min(bound, _id(_text(pending["min"])))
    for group in redis.xinfo_groups(stream):
        if _text(group["name"]) == GROUP:
            ms, seq = _id(_text(group["last-delivered-id"]))
            bound = min(bound, (ms, seq + 1))
    return f"{bound[0]}-{bound[1]}"


def compact(redis: Any, keys: Keys, epoch: int, cutoff_ms: int,
            inboxes: Iterable[Inbox] = ()) -> Compacted:
    """Drop settled entries older than `cutoff_ms` from every inbox (default: the built-in
    ones) and their dedupe marks; return the sums, and the default commands stream's bound."""
    entries = marks = 0
    bound = ""
    for inbox in inboxes or keys.builtin_inboxes():
        done = _compact_inbox(redis, keys, epoch, cutoff_ms, inbox)
        entries, marks = entries + done.entries, marks + done.marks
        bound = bound or done.bound
    return Compacted(entries, marks, bound)


def _compact_inbox(redis: Any, keys: Keys, epoch: int, cutoff_ms: int,
                   inbox: Inbox) -> Compacted:
    """Drop one inbox's settled entries below the cut-off and their marks (paged)."""
    try:
        bound = settled_bound(redis, inbox.key, cutoff_ms)
    except redislib.ResponseError as exc:
        if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
            raise
        return Compacted(0, 0, "")  # never read: nothing settled
    drop = redis.register_script(_DROP)
    entries = marks = 0
    while True:
        page = redis.xrange(inbox.key, "-", f"({bound}", count=COMPACT_PAGE)
        if not page:
            return Compacted(entries, marks, bound)
        ids: list[str] = []
        for _, fields in page:
            raw = fields.get(b"env", fields.get("env"))
            try:
                env = CODEC.envelope(raw if isinstance(raw, bytes) else str(raw).encode())
            except (DecodeError, TypeError, ValueError):
                continue  # a quarantined entry: it never got a mark
            ids.append(inbox.mark(env.command_id))
        last = _id(_text(page[-1][0]))
        trimmed = drop(keys=[inbox.key, keys.done, keys.epoch],
                       args=[epoch, f"{last[0]}-{last[1] + 1}", *ids])
        if trimmed < 0:
            return Compacted(entries, marks, bound)  # fenced: the new leader compacts
        entries += trimmed
        marks += len(ids)
        if len(page) < COMPACT_PAGE:
            return Compacted(entries, marks, bound)


def retention_ms() -> int:
    """Return the idempotency window: MOOR_DEDUPE_RETENTION (a duration, e.g. 24h)."""
    text = os.environ.get("MOOR_DEDUPE_RETENTION", "").strip()
    return parse_duration_ns(text) // 1_000_000 if text else DEFAULT_RETENTION_MS


class Compaction:
    """The leader's side of compaction: ask for it on a schedule, perform what was decided.

    Asking is a command like any other (`CompactLog`, appended by the leader every
    MOOR_COMPACT_INTERVAL seconds, 0 = never; `moor compact` asks by hand), so the
    journal records every compaction (`LogCompacted`). Once the batch that recorded one
    is written, the leader trims below its cut-off.
    """

    def __init__(self) -> None:
        self.retain_ms = retention_ms()
        self.interval_s = float(os.environ.get("MOOR_COMPACT_INTERVAL", DEFAULT_INTERVAL_S))
        self._next_ask = time.monotonic() + self.interval_s
        self._cutoffs: list[int] = []

    def observe(self, records: Iterable[e.EventRecord]) -> None:
        """Note the compactions a batch decided (performed once it is written)."""
        for record in records:
            if isinstance(record.event, e.LogCompacted):
                self._cutoffs.append(record.event.cutoff_ms)

    def forget(self) -> None:
        """Drop what memory noted: a refused or failed write recorded nothing."""
        self._cutoffs.clear()

    def tick(self, redis: Any, keys: Keys, epoch: int | None,
             inboxes: Iterable[Inbox] = ()) -> Compacted | None:
        """Perform a recorded compaction, or ask for the next one when it is due."""
        if self._cutoffs and epoch is not None:
            cutoff = max(self._cutoffs)
            self._cutoffs.clear()
            done = compact(redis, keys, epoch, cutoff, inboxes)
            log.info("compacted %d commands and %d dedupe marks below %s", done.entries,
                     done.marks, done.bound)
            return done
        if self.interval_s > 0 and time.monotonic() >= self._next_ask:
            self._next_ask = time.monotonic() + self.interval_s
            now = time.time_ns()
            env = c.Envelope(command_id=f"compact-{epoch}-{now}", issued_at=now,
                             actor="reducer", reason="retention")
            redis.xadd(keys.internal, CODEC.entry(env, c.CompactLog(retain_ms=self.retain_ms)))
        return None
