"""Which shard a container, a name or a command belongs to (pure: no I/O).

A deployment has `count` shards, "0" to str(count - 1), fixed for its life (MOOR_SHARDS;
resharding is out of scope). A container belongs to one shard for life, and its id says
which: the client draws ids until the first 8 hex digits, mod count, name the shard it
chose. So any id, and any id prefix of 8 digits or more, routes without a lookup.

A name has a home shard too (crc32 of the name, mod count), which holds the truth of who
has the name: a container created with a name lives in the name's home shard, and a
container renamed to a name homed elsewhere holds it through a reservation recorded in
that home shard (engine.core.names, docs/decisions/0015-scale-out.md). With one shard all
of this is "0" and costs nothing.
"""

from __future__ import annotations

import zlib

__all__ = ["ID_DIGITS", "home_of_name", "in_shard", "shard_of_id"]

ID_DIGITS = 8  # the id digits that choose the shard


def shard_of_id(container_id: str, count: int) -> str:
    """Return the shard of a container id (or of a prefix of at least ID_DIGITS digits)."""
    if count <= 1:
        return "0"
    return str(int(container_id[:ID_DIGITS], 16) % count)


def home_of_name(name: str, count: int) -> str:
    """Return the shard that holds who has `name` (no leading slash)."""
    if count <= 1:
        return "0"
    return str(zlib.crc32(name.encode()) % count)


def in_shard(container_id: str, shard: str, count: int) -> bool:
    """Tell whether a (candidate) container id belongs to `shard`."""
    return shard_of_id(container_id, count) == shard
