"""Hold the single writer's lease and the fencing epoch that every write checks.

Taking the lease bumps the epoch; the write script refuses a batch whose epoch is not the
stored one, so a writer paused past its lease cannot write after a successor took over.
"""

from __future__ import annotations

import time
from typing import Any

from engine import scripts
from engine.keys import Keys

__all__ = ["Deposed", "Lease"]


class Deposed(Exception):
    """Another reducer holds the lease now."""


class Lease:
    """One reducer's claim on a shard: the lease key and the epoch it was granted."""

    def __init__(self, redis: Any, keys: Keys, owner: str, lease_ms: int) -> None:
        self.keys = keys
        self.owner = owner
        self.lease_ms = lease_ms
        self.epoch: int | None = None
        self.renewed_at = 0.0
        # Lease changes seen by this process, read by the metrics at scrape time: plain
        # counts, as a change is rare and the reducer's thread is the only writer.
        self.acquired = 0
        self.released = 0
        self.lost = 0
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)

    def acquire(self) -> bool:
        """Take the lease if it is free, which bumps the epoch; return whether we lead."""
        epoch = self._acquire(keys=[self.keys.lease, self.keys.epoch],
                              args=[self.owner, self.lease_ms])
        if not epoch:
            return False
        self.epoch = int(epoch)
        self.renewed_at = time.monotonic()
        self.acquired += 1
        return True

    def renewal_due(self) -> bool:
        """Tell whether a third of the lease has passed since it was last extended."""
        return time.monotonic() - self.renewed_at >= self.lease_ms / 3000

    def renew(self) -> None:
        """Extend the lease when a third of it has passed; raise Deposed when lost."""
        now = time.monotonic()
        if now - self.renewed_at < self.lease_ms / 3000:
            return
        ok = self._renew(keys=[self.keys.lease, self.keys.epoch],
                         args=[self.owner, self.lease_ms, self.epoch])
        if not ok:
            raise Deposed()
        self.renewed_at = now

    def release(self) -> None:
        """Give the lease up (clean shutdown) so a standby takes over at once."""
        if self.epoch is not None:
            self._release(keys=[self.keys.lease], args=[self.owner])
            self.released += 1
        self.epoch = None

    def drop(self) -> None:
        """Forget the epoch without touching the lease (deposed, or Redis went away)."""
        if self.epoch is not None:
            self.lost += 1
        self.epoch = None

    def fence(self, pipe: Any) -> None:
        """Watch the epoch on a transaction pipeline; raise Deposed if it is not ours.

        A transaction queued after this fails with WatchError if a successor bumps the
        epoch before it executes: the caller treats that as Deposed too.
        """
        pipe.watch(self.keys.epoch)
        if self.epoch is not None and pipe.get(self.keys.epoch) != str(self.epoch).encode():
            raise Deposed()

