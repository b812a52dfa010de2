"""Every Redis key name moorage uses, in one place, hash-tagged per shard.

All keys of a shard share the hash tag `{S}`, so a shard's Lua scripts touch one slot and
run unchanged on Redis Cluster. Only shard "0" exists for now.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["GROUP", "PREFIX", "Keys", "consumer_name", "keys_for"]

PREFIX = "moor:v1"
GROUP = "reducer"  # the commands stream's consumer group


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
    commands: str  # stream: commands and reports, many writers
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

    def reply(self, command_id: str) -> str:
        """Return the list a waiting client blocks on for one command's result."""
        return f"{self.prefix}:{{{self.shard}}}:reply:{command_id}"


def keys_for(shard: str = "0", prefix: str = PREFIX) -> Keys:
    """Return the key names of a shard under a prefix (tests use their own prefix)."""
    base = f"{prefix}:{{{shard}}}"
    return Keys(
        prefix=prefix,
        shard=shard,
        commands=f"{base}:commands",
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
    )
