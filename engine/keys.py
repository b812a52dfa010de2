"""Every Redis key name moorage uses, in one place, hash-tagged per shard.

All keys of a shard share one hash tag, so a shard's Lua scripts touch one slot and run
unchanged on Redis Cluster. With one shard the tag is `{0}`; with several, shard i's tag
spreads the shards evenly over the slot space (`slot_tag`), so a cluster whose primaries
split the slots evenly (as `redis-cli --cluster create` does) puts each shard on its own
primary while there are as many primaries as shards.

The reducer reads several input streams ("inboxes"), one per kind of writer, because
Redis ACLs see keys, not payloads: a credential that may append to one stream cannot
append to another (docs/decisions/0006-control-boundary.md). Each inbox names the
principal its entries are recorded as: the stream an entry came from says who wrote it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["CONTROL", "GROUP", "INTERNAL", "KINDS", "PREFIX", "REPORTS", "RESERVED", "Inbox",
           "Keys", "check_principal", "consumer_name", "hash_slot", "keys_for", "slot_tag"]

PREFIX = "moor:v1"
GROUP = "reducer"  # every inbox stream's consumer group

# Inbox kinds: what a stream may carry (engine.core.admission.accepts).
CONTROL = "control"  # lifecycle commands from the control plane; also the default principal
REPORTS = "reports"  # what workers and supervisors observed
INTERNAL = "internal"  # the reducer's own requests (restart timers, compaction, default net)
KINDS = (CONTROL, REPORTS, INTERNAL)

# Principal names that are roles, never a control-plane principal of their own.
RESERVED = frozenset({"control", "worker", "reducer", "admin"})
_PRINCIPAL = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def check_principal(name: str) -> str:
    """Return `name` if it can name a control-plane principal, else raise ValueError."""
    if _PRINCIPAL.fullmatch(name) is None or name in RESERVED:
        raise ValueError(f"invalid principal {name!r}: 1-32 of [a-z0-9_-] starting with a "
                         f"letter, not one of {', '.join(sorted(RESERVED))}")
    return name


class Inbox(NamedTuple):
    """One input stream of the reducer: its key, whom it speaks for, what it may carry.

    `namespaced`: the dedupe marks of its commands are prefixed with the principal, so a
    principal can neither take another's command id (nor a report's deterministic one)
    nor learn another's result by re-sending its id.
    """

    key: str
    principal: str
    kind: str
    namespaced: bool = False

    def mark(self, command_id: str) -> str:
        """Return the `done` field (dedupe mark and stored result) of a command id."""
        return f"{self.principal}/{command_id}" if self.namespaced else command_id


def consumer_name(owner: str, epoch: int) -> str:
    """Return the group consumer one reducer reads as during one term (lease + epoch).

    A name per term, never shared: entries pending under any other name were read by a
    reducer that can no longer write them (a deposed or dead one, or this process in an
    earlier term), so the leader may claim them all (see engine.intake).
    """
    return f"{owner}#{epoch}"


class Keys(NamedTuple):
    """The key names of one shard."""

    prefix: str
    shard: str
    commands: str  # stream: the default control principal's commands (moor CLI, API)
    reports: str  # stream: worker and supervisor reports
    internal: str  # stream: the reducer's own commands (timers, compaction)
    principals: str  # set: control principals with a commands stream of their own
    events: str  # stream: the facts decided, one writer, never trimmed
    quarantine: str  # stream: entries that could not be decoded or validated
    containers: str  # hash: container id -> snapshot (msgpack Container)
    versions: str  # hash: container id -> version (checked by the write script)
    world: str  # hash: engine-wide snapshot parts (images, networks, checkpoint)
    done: str  # hash: command id -> "<last event id> <result>" (dedupe + stored result)
    lease: str  # string: the writer lease (SET NX PX)
    epoch: str  # string: the fencing epoch (INCR on takeover)
    outbox: str  # list: jobs decided but not yet handed to rq (transactional outbox)
    queue: str  # rq queue name of the default host
    names: str = ""  # hash: name -> id of the container (or reservation) holding it
    tag: str = "0"  # the hash tag every key of the shard carries

    def reply(self, command_id: str) -> str:
        """Return the list a waiting client blocks on for one command's result."""
        return f"{self.prefix}:{{{self.tag}}}:reply:{command_id}"

    def sync(self) -> str:
        """Return the key a client writes to learn that what it read is replicated
        (commands.client: WAIT counts a connection's own writes)."""
        return f"{self.prefix}:{{{self.tag}}}:sync"

    def host_queue(self, host: str) -> str:
        """Return the rq queue of a host ("": the default queue, single-host mode)."""
        return f"{self.queue}-{host}" if host else self.queue

    def host_lease(self, host: str) -> str:
        """Return a host's heartbeat lease (string, SET PX by its worker), in the shard."""
        return f"{self.prefix}:{{{self.tag}}}:host:{host}"

    def inbox(self, principal: str = CONTROL) -> Inbox:
        """Return the commands inbox of a control principal (CONTROL: the default one)."""
        if principal == CONTROL:
            return Inbox(self.commands, CONTROL, CONTROL)
        check_principal(principal)
        return Inbox(f"{self.commands}:{principal}", principal, CONTROL, namespaced=True)

    def reports_inbox(self) -> Inbox:
        """Return the workers' and supervisors' inbox (principal "worker")."""
        return Inbox(self.reports, "worker", REPORTS)

    def reducer_inbox(self) -> Inbox:
        """Return the reducer's own inbox (principal "reducer")."""
        return Inbox(self.internal, "reducer", INTERNAL)

    def builtin_inboxes(self) -> tuple[Inbox, ...]:
        """Return the inboxes every reducer reads (principals' own come from `principals`)."""
        return (self.inbox(), self.reports_inbox(), self.reducer_inbox())


def slot_tag(shard: str, count: int = 1) -> str:
    """Return the hash tag of shard `shard` of `count`: "0" alone, else one whose slot
    falls in the shard's even share of the 16384 slots (deterministic, a few tries)."""
    if count <= 1:
        return shard
    share = 16384 // count
    index = int(shard)
    k = 0
    while True:
        tag = f"{shard}.{k}"
        if hash_slot(tag) // share == index:
            return tag
        k += 1


def hash_slot(tag: str) -> int:
    """Return Redis Cluster's hash slot of a hash tag: CRC16-XMODEM of its bytes, mod 16384
    (the cluster specification's function; kept here so engine code stays free of I/O)."""
    crc = 0
    for byte in tag.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def keys_for(shard: str = "0", prefix: str = PREFIX, count: int = 1) -> Keys:
    """Return the key names of a shard under a prefix (tests use their own prefix);
    `count`: how many shards the deployment has (engine.shards)."""
    tag = slot_tag(shard, count)
    base = f"{prefix}:{{{tag}}}"
    return Keys(
        prefix=prefix,
        shard=shard,
        commands=f"{base}:commands",
        reports=f"{base}:reports",
        internal=f"{base}:internal",
        principals=f"{base}:principals",
        events=f"{base}:events",
        quarantine=f"{base}:quarantine",
        containers=f"{base}:containers",
        versions=f"{base}:versions",
        world=f"{base}:world",
        done=f"{base}:done",
        lease=f"{base}:lease",
        epoch=f"{base}:epoch",
        outbox=f"{base}:outbox",
        queue=f"moor-{prefix.replace(':', '-')}-{shard}-host",
        names=f"{base}:names",
        tag=tag,
    )
