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
from engine.core.react import react
from engine.core.state import World
from engine.intake import Prepared
from engine.keys import GROUP, Keys
from engine.outbox import encode_job
from engine.snapshot import encode_world_parts
from engine.timers import RestartTimers
from events import model as e

__all__ = ["Batch", "Redo", "decide_batch"]

# Events are leaf Structs: a type lookup replaces isinstance.
_WORLD_EVENTS = frozenset((e.NetworkDefined, e.ImageRegistered, e.ImageRemoved,
                           e.HostBooted))
_ENC = msgspec.msgpack.Encoder()


class Redo(Exception):
    """The batch was refused for stale memory: rebuild and process it again."""


class Batch(NamedTuple):
    """A decided batch: its write's ARGV, the inbox streams it acknowledges (the write's
    last KEYS), the dedupe marks it answers, its fencing epoch."""

    argv: list[Any]
    streams: tuple[str, ...]
    command_ids: frozenset[str]
    epoch: int | None


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
    for item in decoded:
        env = item[1]
        if env is None:
            quarantine += (item[0], item[4], item[2], _raw(item[3]))
            continue
        mark = item[0]  # the command id, or principal/id (engine.keys.Inbox.mark)
        # Fire-and-forget senders (worker reports) get no wake-up list: nobody pops it.
        if mark in done or mark in seen:
            if env.reply:  # a duplicate: answer with the stored result again
                replies += (mark, reply_key(env.command_id))
            continue
        seen.add(mark)
        cid, expected_version, records, result = apply_command(world, env, item[2], item[3])
        commands += (mark, encode(result), len(records))
        commands += map(encode, records)
        if env.reply:
            replies += (mark, reply_key(env.command_id))
        timers.observe(records)
        for observe in observers:
            observe(records)
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
    for section in (replies, quarantine):
        argv.append(len(section))
        argv += section
    return Batch(argv, tuple(acks), frozenset(seen), epoch)


def _raw(fields: dict[bytes, bytes]) -> bytes:
    return _ENC.encode([[k, v] for k, v in fields.items()])
