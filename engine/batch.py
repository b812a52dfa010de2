"""Decide one prepared batch against memory and build its write's ARGV (no I/O).

The ARGV is the flat section layout scripts.WRITE documents. Deciding changes the World in
place: it is only memory until the batch's write lands, and a refused write makes the
reducer throw that memory away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from engine.core.decider import apply_command
from engine.core.evolve import WORLD_EVENTS
from engine.core.react import react
from engine.core.state import World
from engine.intake import Prepared
from engine.keys import GROUP, Keys
from engine.metrics_journal import NOTED
from engine.outbox import encode_job
from engine.snapshot import encode_world_parts
from engine.timers import RestartTimers
from events import model as e

__all__ = ["Batch", "Redo", "Tally", "decide_batch"]

_ENC = msgspec.msgpack.Encoder()


class Redo(Exception):
    """The batch was refused for stale memory: rebuild and process it again."""


class Tally(NamedTuple):
    """What a batch decided, for the metrics once its write lands (engine.metrics).

    Counted in the loop that decides, so the metrics cost no second pass: commands decided
    and duplicates answered again, by command type; entries quarantined; the records a
    metric reads (engine.metrics_journal.NOTED).
    """

    decided: dict[type, int]
    duplicates: dict[type, int]
    quarantined: int
    noted: list[e.EventRecord]


class Batch(NamedTuple):
    """A decided batch: its write's ARGV, the inbox streams it acknowledges (the write's
    last KEYS), the dedupe marks it answers, its fencing epoch, its tally."""

    argv: list[Any]
    streams: tuple[str, ...]
    command_ids: frozenset[str]
    epoch: int | None
    tally: Tally | None = None


def decide_batch(prepared: Prepared, world: World, timers: RestartTimers, keys: Keys, *,
                 epoch: int | None, reply_ttl: int,
                 observers: tuple[Callable[[list[e.EventRecord]], None], ...] = ()) -> Batch:
    """Decide every command of a prepared batch in order and build the batch's write."""
    decoded, acks, done = prepared
    encode = _ENC.encode
    reply_key = keys.reply
    # Flat ARGV sections (see scripts.WRITE): a few list appends per command, and
    # per-container facts gathered once per batch (`before`, `after`).
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
    decided: dict[type, int] = {}
    duplicates: dict[type, int] = {}
    noted: list[e.EventRecord] = []
    named: dict[str, str | None] = {}  # the names index's changes: name -> holder (None: gone)
    for item in decoded:
        env = item[1]
        if env is None:
            quarantine += (item[0], item[4], item[2], _raw(item[3]))
            continue
        mark = item[0]  # the command id, or principal/id (engine.keys.Inbox.mark)
        # Fire-and-forget senders (worker reports) get no wake-up list: nobody pops it.
        kind = type(item[2])
        if mark in done or mark in seen:
            if env.reply:  # a duplicate: answer with the stored result again
                replies += (mark, reply_key(env.command_id))
            duplicates[kind] = duplicates.get(kind, 0) + 1
            continue
        seen.add(mark)
        decided[kind] = decided.get(kind, 0) + 1
        cid, expected_version, records, result = apply_command(world, env, item[2], item[3])
        commands += (mark, encode(result), len(records))
        commands += map(encode, records)
        if env.reply:
            replies += (mark, reply_key(env.command_id))
        timers.observe(records)
        for observe in observers:
            observe(records)
        for record in records:
            event_type = type(record.event)
            if event_type in WORLD_EVENTS:  # leaf Structs: a type lookup, no isinstance
                world_changed = True
            if event_type in NOTED:
                noted.append(record)
            if event_type in _NAMING:
                _rename_index(named, record)
            found = react(world, record)
            if found:
                jobs += map(encode_job, found)
        # No container before nor after (e.g. a refused create): nothing to check.
        if cid and (expected_version >= 0 or cid in world.containers):
            prior = after.get(cid)
            if prior is None:
                before[cid] = expected_version
            elif prior != expected_version:
                raise Redo()  # memory disagrees with itself: never write that
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
    argv: list[Any] = [epoch, GROUP, reply_ttl,
                       encode_world_parts(world) if world_changed else "", len(acks)]
    for ids in acks.values():
        argv.append(len(ids))
        argv += ids
    for section in (list(before), list(before.values()), versions, snapshots,
                    deleted, jobs):
        argv.append(len(section))
        argv += section
    argv.append(len(seen))  # the commands section counts commands, not items
    argv += commands
    named_pairs: list[Any] = []
    unnamed: list[str] = []
    for name, holder in named.items():
        if holder is None:
            unnamed.append(name)
        else:
            named_pairs += (name, holder)
    for section in (replies, quarantine, named_pairs, unnamed):
        argv.append(len(section))
        argv += section
    tally = Tally(decided, duplicates, len(quarantine) // 4, noted)
    return Batch(argv, tuple(acks), frozenset(seen), epoch, tally)


_NAMING = frozenset((e.ContainerCreated, e.ContainerRenamed, e.ContainerDestroyed,
                     e.NameReserved, e.NameReleased))


def _rename_index(named: dict[str, str | None], record: e.EventRecord) -> None:
    """Note what a naming fact changes in the names index (the last change wins)."""
    ev = record.event
    if type(ev) is e.ContainerCreated:
        named[ev.name] = record.meta.container_id
    elif type(ev) is e.ContainerRenamed:
        named[ev.old_name] = None
        named[ev.new_name] = record.meta.container_id
    elif type(ev) is e.ContainerDestroyed:
        named[ev.name] = None
    elif type(ev) is e.NameReserved:
        named[ev.name] = ev.holder
    else:
        named[ev.name] = None  # NameReleased


def _raw(fields: dict[bytes, bytes]) -> bytes:
    return _ENC.encode([[k, v] for k, v in fields.items()])
