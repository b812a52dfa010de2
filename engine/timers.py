"""Restart back-off timers: when a policy restart's delay is over, append ResumeRestart.

The decision to restart (and its due time) is a recorded fact (RestartScheduled); only
firing it needs a clock, so this lives in the shell. The command id is deterministic, so
a timer fired twice (a crash, a second leader) appends a duplicate the reducer drops.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable

from commands import schema as c
from commands.codec import CODEC
from engine.core.state import World
from events import model as e

__all__ = ["RestartTimers"]


class RestartTimers:
    """Due times of pending policy restarts, fed by the records the reducer writes."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int]] = []  # (due ns, container id, generation)

    def load(self, world: World) -> None:
        """Rebuild from the state at boot (the due time is part of each container)."""
        self._heap = [(ctr.restart_due, ctr.id, ctr.generation)
                      for ctr in world.containers.values()
                      if ctr.restarting and ctr.restart_due and not ctr.saga]
        heapq.heapify(self._heap)

    def observe(self, records: Iterable[e.EventRecord]) -> None:
        for record in records:
            if isinstance(record.event, e.RestartScheduled):
                heapq.heappush(self._heap, (record.event.due, record.meta.container_id,
                                            record.event.generation))

    def wait_ms(self, cap_ms: int, now_ns: int | None = None) -> int:
        """Return how long a blocking read may wait before the next timer is due."""
        if not self._heap:
            return cap_ms
        now = time.time_ns() if now_ns is None else now_ns
        return max(0, min(cap_ms, (self._heap[0][0] - now) // 1_000_000 + 1))

    def fire(self, redis: object, commands_key: str, now_ns: int | None = None) -> int:
        """Append ResumeRestart for every timer that is due; return how many."""
        now = time.time_ns() if now_ns is None else now_ns
        fired = 0
        while self._heap and self._heap[0][0] <= now:
            _, cid, generation = heapq.heappop(self._heap)
            env = c.Envelope(command_id=f"resume-{cid}-{generation}", container_id=cid,
                             issued_at=now, actor="reducer", reason="restart policy")
            redis.xadd(commands_key, {  # type: ignore[attr-defined]
                "env": CODEC.encode(env),
                "cmd": CODEC.encode(c.ResumeRestart(generation=generation))})
            fired += 1
        return fired
