"""The API's stats collector: one sampler per host serving every subscriber.

dockerd's daemon/stats/collector.go, on the journal. A feed per container opens when its
first subscriber asks and closes when its last one leaves or the container is removed
(dockerd's `StopCollection`). One sampler task reads every running feed's cgroups once
per interval, in one worker-thread call, and hands the same reading to all of that
feed's subscribers: N clients of a container cost one read a second. A stopped feed
reads nothing and publishes None (Docker's zeroed document, as dockerd's collector
publishes for a container that is not running) until the container starts again.

Why in the API process: the subscribers are its HTTP clients; it already follows the
journal, the one authority on started, died and destroyed, and it runs on the host
whose cgroups it reads (dockerd's collector lives in the daemon likewise). A sample is
not a fact: nothing goes to Redis.

Those facts come from one follower (blocking XREADs in the pool) started at the
checkpoint of the first subscriber's snapshot and stopped with the last feed. A later
subscriber's snapshot may be older than what the follower already applied: the
follower remembers each container's last start/stop/remove position (`_latest`, the
newest `_REMEMBER`), so the feed takes whichever is newer; a snapshot older than what
it still remembers is read again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.config import default_cgroup_parent, engine_id
from engine.core.state import Container
from events import model as e
from events.model import EventRecord
from moor.api.context import ApiContext, ctx, run
from projections.stream import load_live, watch
from projections.views.inspect import find_container
from projections.views.points import id_key
from workers.proc import stats as host_stats

__all__ = ["INTERVAL", "Collector", "Reading", "Subscription", "collector_for", "engine_parent"]

log = logging.getLogger("moorage.api")
Reading = dict[str, Any] | None  # None: the container is not running (a zeroed document)
Position = tuple[int, int]  # a journal stream id, comparable
_END = object()
_REMOVED = -1  # a pid meaning the container was removed
_BACKLOG = 8  # readings a slow subscriber may lag behind; older ones are dropped
_REMEMBER = 4096  # containers whose last start/stop the follower keeps
_BLOCK_MS = 500
INTERVAL = 1.0  # seconds between readings, as dockerd's collector


def engine_parent(context: ApiContext) -> str:
    """Return the cgroup parent of this server's engine (its data root and key prefix)."""
    explicit = os.environ.get("MOOR_CGROUP_PARENT")
    return (explicit or default_cgroup_parent(
        engine_id(context.data_root, context.keys.prefix, context.keys.shard))).strip("/")


class Subscription:
    """One client's readings of one container, in order; ends when the container is
    removed."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, item: Any) -> None:
        if self._queue.qsize() >= _BACKLOG:
            self._queue.get_nowait()  # dockerd's publisher drops for slow readers too
        self._queue.put_nowait(item)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Reading:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # stays ended
            raise StopAsyncIteration
        reading: Reading = item
        return reading


@dataclass(eq=False)
class _Feed:
    cid: str
    pid: int  # 0: not running
    network: bool  # False: host network, no interfaces of its own
    at: Position  # the journal position `pid` reflects
    subs: set[Subscription] = field(default_factory=set)


class Collector:
    """Sample subscribed containers every `interval` seconds; see the module docstring."""

    def __init__(self, context: ApiContext, interval: float | None = None) -> None:
        self.context, self.interval = context, INTERVAL if interval is None else interval
        self.parent = engine_parent(context)
        self._feeds: dict[str, _Feed] = {}
        self._latest: collections.OrderedDict[str, tuple[Position, int]] = \
            collections.OrderedDict()
        self._horizon: Position = (0, 0)
        self._sampler: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None

    # --- subscribers ---

    async def subscribe(self, ctr: Container, checkpoint: str) -> Subscription:
        """Attach to the container's feed (opening it) as of the snapshot at `checkpoint`."""
        for _ in range(5):
            sub = self._attach(ctr, checkpoint)
            if sub is not None:
                return sub
            world, checkpoint = await run(load_live, self.context.redis, self.context.keys)
            ctr = find_container(world, ctr.id)
        raise RuntimeError("the stats collector could not catch up with the journal")

    def unsubscribe(self, sub: Subscription) -> None:
        """Detach; the feed closes with its last subscriber, the tasks with the last feed."""
        feed = self._feeds.get(sub.cid)
        if feed is not None:
            feed.subs.discard(sub)
            if not feed.subs:
                self._close(feed)

    def read(self, ctr: Container) -> Reading:
        """Return one reading now (one-shot), None if the container has no group left."""
        try:
            return host_stats.sample(ctr.id, ctr.pid, parent=self.parent,
                                     network=ctr.host_config.network_mode != "host")
        except FileNotFoundError:
            return None

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    def _attach(self, ctr: Container, checkpoint: str) -> Subscription | None:
        at = id_key(checkpoint)
        if self._follower is None:
            self._horizon = at
            self._latest.clear()
            self._follower = self._start(self._follow(checkpoint))
        elif at < self._horizon:
            return None  # older than what the follower still remembers: read again
        pid = ctr.pid if ctr.running and not ctr.restarting else 0
        known = self._latest.get(ctr.id)
        if known is not None and known[0] > at:
            at, pid = known
        sub = Subscription(ctr.id)
        if pid == _REMOVED:
            sub.push(_END)
            self._idle()
            return sub
        feed = self._feeds.get(ctr.id)
        if feed is None:
            feed = self._feeds[ctr.id] = _Feed(ctr.id, pid,
                                               ctr.host_config.network_mode != "host", at)
        elif at > feed.at:
            feed.pid, feed.at = pid, at
        feed.subs.add(sub)
        if self._sampler is None:
            self._sampler = self._start(self._sample())
        return sub

    def _close(self, feed: _Feed) -> None:
        """dockerd's StopCollection: end every subscriber and forget the feed."""
        for sub in feed.subs:
            sub.push(_END)
        feed.subs.clear()
        if self._feeds.get(feed.cid) is feed:
            del self._feeds[feed.cid]
        self._idle()

    def _idle(self) -> None:
        """Stop sampling and following once no feed is left."""
        if self._feeds:
            return
        for task in (self._sampler, self._follower):
            if task is not None:
                task.cancel()
        self._sampler = self._follower = None

    # --- the two tasks ---

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        task.add_done_callback(self._stopped)
        return task

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A task that failed (Redis gone, say) ends every feed: no stale stream goes on."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("stats collector stopped: %r", task.exception())
        for feed in list(self._feeds.values()):
            self._close(feed)
        self._idle()

    async def _sample(self) -> None:
        while True:
            feeds = list(self._feeds.values())
            live = [(f.cid, f.pid, f.network) for f in feeds if f.pid > 0]
            readings = await run(self._read_all, live) if live else {}
            for feed in feeds:
                reading = readings.get(feed.cid) if feed.pid > 0 else None
                for sub in feed.subs:
                    sub.push(reading)
            await asyncio.sleep(self.interval)

    def _read_all(self, live: list[tuple[str, int, bool]]) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        for cid, pid, network in live:
            try:
                out[cid] = host_stats.sample(cid, pid, parent=self.parent, network=network)
            except FileNotFoundError:
                out[cid] = None  # stopped; the journal says so in a moment
            except (OSError, ValueError) as exc:
                log.warning("stats of %s: %s", cid[:12], exc)
                out[cid] = None
        return out

    async def _follow(self, cursor: str) -> None:
        while True:
            for stream_id, record in await run(self._batch, cursor):
                cursor, ev = stream_id, record.event
                if isinstance(ev, e.ContainerStarted):
                    pid = ev.pid
                elif isinstance(ev, e.ContainerDied | e.StartFailed | e.RestartScheduled):
                    pid = 0
                elif isinstance(ev, e.ContainerDestroyed):
                    pid = _REMOVED
                else:
                    continue
                self._apply(record.meta.container_id, id_key(stream_id), pid)

    def _batch(self, cursor: str) -> list[tuple[str, EventRecord]]:
        """Return the events after `cursor`: one blocking XREAD (at most `_BLOCK_MS`).

        A pool thread per read rather than a thread of its own: asyncio.run waits for it
        at shutdown, so a read never outlives the loop it reports to.
        """
        once = iter((False,))  # watch checks stop() before each read: let one through
        return list(watch(self.context.redis, self.context.keys, cursor, block_ms=_BLOCK_MS,
                          stop=lambda: next(once, True)))

    def _apply(self, cid: str, at: Position, pid: int) -> None:
        self._latest[cid] = (at, pid)
        self._latest.move_to_end(cid)
        if len(self._latest) > _REMEMBER:
            _, (forgotten, _) = self._latest.popitem(last=False)
            self._horizon = max(self._horizon, forgotten)
        feed = self._feeds.get(cid)
        if feed is None or at <= feed.at:
            return
        if pid == _REMOVED:
            self._close(feed)
        else:
            feed.pid, feed.at = pid, at


_COLLECTORS: weakref.WeakKeyDictionary[web.Application, dict[str, Collector]] = \
    weakref.WeakKeyDictionary()


def collector_for(request: web.Request, container_id: str = "") -> Collector:
    """Return the collector of the container's shard (one per shard and server: each
    follows its shard's journal and cgroups), made on first use."""
    context = ctx(request).shard_context(container_id)
    per_shard = _COLLECTORS.setdefault(request.app, {})
    found = per_shard.get(context.keys.shard)
    if found is None:
        found = per_shard[context.keys.shard] = Collector(context)
    return found
