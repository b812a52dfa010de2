"""The host watch: notice a host's lease lapse (or come back) and ask the reducer to record it.

Each host's worker keeps a lease in the shard (`Keys.host_lease`, SET PX, renewed every
third of its length). Noticing that a lease is gone needs a clock and Redis, so it lives in
the reducer's shell, as the restart timers do: the leader checks the leases of the hosts
the world knows about once per `MOOR_HOST_CHECK_MS` (1 s) and appends `MarkHostLost` or
`MarkHostReturned` to its own inbox; the decision (engine.core.hosts) stays pure and
recorded. Command ids carry the host and its loss count, so a second leader noticing the
same lapse appends a duplicate that the dedupe marks drop.

While a host is lost, `rm -f` of one of its containers only marks it dead (nobody there
can report it removed); the watch then appends `DropLostContainer` for it, on every loop
(not once per check: the client waits for it), which records it destroyed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from commands import schema as c
from commands.codec import CODEC
from engine.core.state import World, host_lost
from engine.keys import Keys

__all__ = ["HostWatch", "lost_command_id", "returned_command_id"]

_DEFAULT_CHECK_MS = 1000


def lost_command_id(host: str, losses: int) -> str:
    """Return the id of the command recording a host's (losses+1)-th loss."""
    return f"host-lost-{host}-{losses}"


def returned_command_id(host: str, losses: int) -> str:
    """Return the id of the command recording a host's return after its losses-th loss."""
    return f"host-returned-{host}-{losses}"


class HostWatch:
    """Compare the hosts the world holds alive (or lost) with their leases in Redis."""

    def __init__(self, interval_ms: int | None = None) -> None:
        if interval_ms is None:
            interval_ms = int(os.environ.get("MOOR_HOST_CHECK_MS") or _DEFAULT_CHECK_MS)
        self.interval = interval_ms / 1000
        self._due = 0.0
        self._sent: set[str] = set()  # ids appended by this leader (one append per id)

    def tick(self, redis: Any, keys: Keys, world: World, now: float | None = None) -> int:
        """Check the leases if a check is due; append what changed; return how many."""
        if not world.hosts:
            return 0  # single-host mode: no round trip
        appended = self._drop_removed(redis, keys, world)
        clock = time.monotonic() if now is None else now
        if clock < self._due:
            return appended
        self._due = clock + self.interval
        hosts = sorted(world.hosts.values(), key=lambda h: h.id)
        with redis.pipeline(transaction=False) as pipe:
            for host in hosts:
                pipe.exists(keys.host_lease(host.id))
            present = pipe.execute()
        for host, beating in zip(hosts, present, strict=True):
            cmd: c.Command
            if host.alive and not beating:
                cmd = c.MarkHostLost(host=host.id, losses=host.losses)
                command_id, reason = lost_command_id(host.id, host.losses), "host lease lapsed"
            elif not host.alive and beating:
                cmd = c.MarkHostReturned(host=host.id, losses=host.losses)
                command_id = returned_command_id(host.id, host.losses)
                reason = "host lease renewed"
            else:
                continue
            if command_id in self._sent:
                continue
            self._append(redis, keys, cmd, command_id, reason)
            appended += 1
        return appended

    def _drop_removed(self, redis: Any, keys: Keys, world: World) -> int:
        """Append DropLostContainer for every removed container of a lost host (a scan of
        the containers, only while some host is lost)."""
        if all(host.alive for host in world.hosts.values()):
            return 0
        appended = 0
        for ctr in world.containers.values():
            if ctr.dead and ctr.removal_in_progress and host_lost(world, ctr):
                # With the loss count: lost again after a return, it is asked again.
                command_id = f"drop-lost-{ctr.id}-{world.hosts[ctr.host].losses}"
                if command_id not in self._sent:
                    self._append(redis, keys, c.DropLostContainer(generation=ctr.generation),
                                 command_id, "removed while its host is lost", ctr.id)
                    appended += 1
        return appended

    def _append(self, redis: Any, keys: Keys, cmd: c.Command, command_id: str, reason: str,
                container_id: str = "") -> None:
        env = c.Envelope(command_id=command_id, container_id=container_id,
                         issued_at=time.time_ns(), actor="reducer", reason=reason)
        redis.xadd(keys.internal, {"env": CODEC.encode(env), "cmd": CODEC.encode(cmd)})
        self._sent.add(command_id)
