"""Release name reservations nobody holds any more (the I/O side of engine.core.names).

A rename across shards reserves the new name in its home shard before renaming in the
container's shard (commands.client.router). If the client dies between the steps, or
the container is later renamed again or removed, the reservation outlives its purpose.
The home shard's leader therefore looks, every `interval`, at each reservation it has
held for at least `grace`: when the holder's snapshot in its own shard does not carry the
name (renamed, removed, never renamed), it asks its own reducer to release it, through
the internal inbox, so the release is a decided, replayable fact like any other.

The grace keeps a rename (or a create) in flight safe: its reservation is young. A holder
that was destroyed (no snapshot, but its version's tombstone) can no longer be in flight:
its reservation goes at the next look, so a removed container's name is free again within
a second or so, as Docker frees it at once. The check reads the holder's snapshot and
versions, written atomically with the holder shard's facts, so a name shown there is held.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from commands import schema as c
from commands.codec import CODEC
from engine.core.state import Container, World
from engine.keys import Keys
from engine.shards import shard_of_id

__all__ = ["ReservationSweeper"]

log = logging.getLogger("moorage.reducer")
_CONTAINER = msgspec.msgpack.Decoder(Container)
_HOLDS, _GONE, _OTHER = "holds", "gone", "other"  # what a reservation's holder does


class ReservationSweeper:
    """Watch one shard's reservations; `reach(shard)` returns (redis, keys) of a shard."""

    def __init__(self, reach: Callable[[str], tuple[Any, Keys]], count: int, *,
                 interval: float = 1.0, grace: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reach = reach
        self.count = count
        self.interval = interval
        self.grace = grace
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (name, holder) -> first noticed
        self._next = 0.0
        self.released = 0

    def tick(self, world: World, redis: Any, keys: Keys) -> int:
        """Ask for the release of every stale reservation; return how many were asked."""
        now = self.clock()
        if now < self._next:
            return 0
        self._next = now + self.interval
        held = set(world.reserved.items())
        self._seen = {pair: at for pair, at in self._seen.items() if pair in held}
        asked = 0
        for name, holder in sorted(held):
            first = self._seen.setdefault((name, holder), now)
            verdict = self._verdict(holder, name)
            if verdict == _HOLDS or (verdict != _GONE and now - first < self.grace):
                continue
            self._ask_release(redis, keys, name, holder)
            asked += 1
        self.released += asked
        return asked

    def _verdict(self, holder: str, name: str) -> str:
        """Whether the holder carries the name, was destroyed, or neither (yet)."""
        peer, peer_keys = self.reach(shard_of_id(holder, self.count))
        with peer.pipeline(transaction=True) as pipe:
            pipe.hget(peer_keys.containers, holder)
            pipe.hexists(peer_keys.versions, holder)
            raw, versioned = pipe.execute()
        if raw is not None:
            return _HOLDS if _CONTAINER.decode(raw).name == name else _OTHER
        return _GONE if versioned else _OTHER

    @staticmethod
    def _ask_release(redis: Any, keys: Keys, name: str, holder: str) -> None:
        env = c.Envelope(command_id=uuid.uuid4().hex, issued_at=time.time_ns(),
                         actor="moor-reducer", reason="reservation without a holder")
        redis.xadd(keys.internal, {"env": CODEC.encode(env),
                                   "cmd": CODEC.encode(c.ReleaseName(name=name, holder=holder))})
        log.info("releasing name %s reserved for %s: its holder does not carry it", name,
                 holder[:12])
