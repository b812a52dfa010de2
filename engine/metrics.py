"""The reducer's Prometheus metrics: their definitions, the hook a written batch calls, and
the gauges computed when scraped (docs/decisions/0010-metrics.md).

Cheap in the fold by construction: deciding only tallies into plain dicts and keeps the
records a metric reads (engine.batch.Tally); `written` turns one landed batch's tally into
counter increments once per batch and label, and times the saga facts into plain bucket
arrays (no lock, no label lookup per fact). What can be read at scrape time is:
containers by state from the reducer's World, the lease from memory, the inbox lag from
Redis (two pipelined round trips per scrape, off the fold's thread). Each reducer has a
registry of its own, so a test process may hold many.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import redis as redislib
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.batch import Batch
from engine.core.state import status_of
from engine.keys import GROUP, Inbox
from engine.metrics_journal import TIMED, StartClock, failure_step
from events import model as e
from events.saga import STEPS

if TYPE_CHECKING:
    from engine.reducer import Reducer

__all__ = ["STATES", "Buckets", "ReducerMetrics", "inbox_label", "stream_age_seconds"]

log = logging.getLogger("moorage.metrics")

STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
_FOLD_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
_STEP_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_START_BUCKETS = (.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
_LAG_SCAN = 10_000  # Redis 6.2 has no group lag: count at most this many undelivered


def inbox_label(inbox: Inbox) -> str:
    """Return an inbox's `inbox` label: its kind, or control:<principal> for a principal."""
    return f"{inbox.kind}:{inbox.principal}" if inbox.namespaced else inbox.kind


def stream_age_seconds(entry_id: bytes | str, now_ms: int) -> float:
    """Return how long ago Redis added a stream entry (its id starts with unix ms)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return max(0, now_ms - int(text.partition("-")[0])) / 1000


class ReducerMetrics:
    """One reducer's series: counters and histograms fed per written batch."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.received = Counter(
            "moor_commands_received", "Inbox entries decoded, duplicates included, by "
            "command type", ["type"], registry=reg)
        self.decided = Counter(
            "moor_commands_decided", "Commands decided (first delivery), whatever the "
            "outcome, by command type", ["type"], registry=reg)
        self.rejected = Counter(
            "moor_commands_rejected", "Commands refused (CommandRejected facts), by command "
            "type and HTTP status", ["type", "status"], registry=reg)
        self.quarantined = Counter(
            "moor_quarantined_entries", "Inbox entries sent to the quarantine stream",
            registry=reg)
        self.failures = Counter(
            "moor_job_failures", "Host jobs that failed (StartFailed, RemovalFailed, "
            "FreezeFailed facts), by step", ["step"], registry=reg)
        self.execs_started = Counter(
            "moor_exec_sessions_started", "Exec sessions started (ExecStarted facts)",
            registry=reg)
        self.execs_finished = Counter(
            "moor_exec_sessions_finished", "Exec sessions ended (ExecDied facts)",
            registry=reg)
        self.fold = Histogram(
            "moor_reducer_fold_seconds", "Per batch: from its decide to its write "
            "acknowledged by Redis", buckets=_FOLD_BUCKETS, registry=reg)
        self.batch_size = Histogram(
            "moor_reducer_batch_commands", "Inbox entries per written batch",
            buckets=_BATCH_BUCKETS, registry=reg)
        # Observed per fact, up to a few per command: plain buckets (no lock, no label
        # lookup), exported by the scrape collector. The fold's thread is their one writer.
        self.steps = {step: Buckets(_STEP_BUCKETS) for step in STEPS}
        self.start = Buckets(_START_BUCKETS)
        self.clock = StartClock()
        self._names: dict[type, str] = {}

    def watch(self, reducer: Reducer) -> None:
        """Add the gauges read from `reducer` at scrape time (containers, lease, lag)."""
        self.registry.register(_ScrapeCollector(reducer, self))

    def written(self, batch: Batch, seconds: float) -> None:
        """Count a batch whose write landed, decided `seconds` before its acknowledgement."""
        try:
            self._written(batch, seconds)
        except Exception:  # a metrics bug must never stop the fold: log it, go on
            log.exception("metrics: a written batch was not counted")

    def _written(self, batch: Batch, seconds: float) -> None:
        tally = batch.tally
        if tally is None:
            return
        self.fold.observe(seconds)
        decided, duplicates = tally.decided, tally.duplicates
        self.batch_size.observe(sum(decided.values()) + sum(duplicates.values())
                                + tally.quarantined)
        for kind, count in decided.items():
            name = self._name(kind)
            self.decided.labels(name).inc(count)
            self.received.labels(name).inc(count + duplicates.get(kind, 0))
        for kind, count in duplicates.items():
            if kind not in decided:
                self.received.labels(self._name(kind)).inc(count)
        if tally.quarantined:
            self.quarantined.inc(tally.quarantined)
        if tally.noted:
            self._note(tally.noted)

    def _name(self, kind: type) -> str:
        name = self._names.get(kind)
        if name is None:
            name = self._names[kind] = kind.__name__  # the command's tag, as rejections name it
        return name

    def _note(self, records: list[e.EventRecord]) -> None:
        """Time the saga facts; count the others per batch, then once per label."""
        note, steps, start = self.clock.note, self.steps, self.start
        counts: dict[tuple[Any, ...], int] = {}
        for record in records:
            event = record.event
            kind = type(event)
            if kind in TIMED:
                for step, seconds in note(record):
                    (start if step == "start" else steps[step]).observe(seconds)
                if kind is not e.StartFailed:
                    continue
            if isinstance(event, e.CommandRejected):
                key: tuple[Any, ...] = (self.rejected, event.command, str(event.status))
            elif kind is e.ExecStarted:
                key = (self.execs_started,)
            elif kind is e.ExecDied:
                key = (self.execs_finished,)
            else:
                failed = failure_step(event)
                if failed is None:
                    continue
                key = (self.failures, failed)
            counts[key] = counts.get(key, 0) + 1
        for (metric, *labels), count in counts.items():
            (metric.labels(*labels) if labels else metric).inc(count)


class Buckets:
    """A histogram as plain numbers: one writer adds, a scrape copies (the GIL suffices)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last: +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation in the first bucket whose bound is at least `value`."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def exposed(self) -> tuple[list[tuple[str, float]], float]:
        """Return the cumulative buckets (Prometheus's `le` form) and the sum."""
        counts, total = list(self.counts), self.total
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), counts,
                                strict=True):
            running += count
            out.append((bound, running))
        return out, total


class _ScrapeCollector(Collector):
    """Gauges computed when scraped, from the reducer's memory and its inboxes in Redis."""

    def __init__(self, reducer: Reducer, metrics: ReducerMetrics) -> None:
        self.reducer = reducer
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # registering must not read Redis

    def collect(self) -> Iterator[Metric]:
        reducer = self.reducer
        lease = reducer.lease
        leading = lease.epoch is not None
        yield GaugeMetricFamily("moor_reducer_leader",
                                "1 while this reducer holds the lease", value=int(leading))
        yield GaugeMetricFamily("moor_reducer_epoch", "The fencing epoch it leads with "
                                "(0: standing by)", value=lease.epoch or 0)
        changes = CounterMetricFamily("moor_reducer_lease_changes", "Lease changes of this "
                                      "reducer", labels=["change"])
        for change in ("acquired", "released", "lost"):
            changes.add_metric([change], getattr(lease, change))
        yield changes
        yield from _histograms(self.metrics)
        if not leading:
            return  # a standby's memory is not the engine's state: leave it to the leader
        yield from _world_gauges(reducer)
        yield from _lag_gauges(reducer)


def _histograms(metrics: ReducerMetrics) -> Iterator[Metric]:
    steps = HistogramMetricFamily("moor_start_step_seconds", "Start saga step durations "
                                  "from the journal's timestamps", labels=["step"])
    for step, buckets in metrics.steps.items():
        cumulative, total = buckets.exposed()
        steps.add_metric([step], cumulative, total)
    yield steps
    start = HistogramMetricFamily("moor_start_seconds", "StartInitiated to "
                                  "ContainerStarted, from the journal's timestamps")
    cumulative, total = metrics.start.exposed()
    start.add_metric([], cumulative, total)
    yield start


def _world_gauges(reducer: Reducer) -> Iterator[Metric]:
    # One C-level copy (atomic under the GIL) while the fold thread may insert or delete;
    # the records themselves are immutable.
    containers = list(reducer.world.containers.values())
    counts = dict.fromkeys(STATES, 0)
    running_execs = 0
    for ctr in containers:
        state = status_of(ctr)
        counts[state] = counts.get(state, 0) + 1
        if ctr.execs:
            running_execs += sum(1 for x in list(ctr.execs.values()) if x.running)
    by_state = GaugeMetricFamily("moor_containers", "Containers by Docker state, as the "
                                 "reducer holds them", labels=["state"])
    for state, count in counts.items():
        by_state.add_metric([state], count)
    yield by_state
    yield GaugeMetricFamily("moor_exec_sessions_running", "Exec sessions whose process "
                            "runs", value=running_execs)


def _lag_gauges(reducer: Reducer) -> Iterator[Metric]:
    """Undecided entries per inbox (pending in the group plus undelivered) and the age of
    the oldest: what the fold has yet to do, even when the fold itself is stuck."""
    inboxes = list(reducer.intake.inboxes)
    try:
        found = _read_lag(reducer.redis, inboxes)
    except redislib.RedisError as exc:
        log.warning("metrics: no inbox lag (%s)", exc)
        return
    entries = GaugeMetricFamily("moor_reducer_lag_entries", "Inbox entries not yet decided "
                                "(pending plus undelivered)", labels=["inbox"])
    seconds = GaugeMetricFamily("moor_reducer_lag_seconds", "Age of the oldest inbox entry "
                                "not yet decided (0: none)", labels=["inbox"])
    for inbox, (count, age) in zip(inboxes, found, strict=True):
        entries.add_metric([inbox_label(inbox)], count)
        seconds.add_metric([inbox_label(inbox)], age)
    yield entries
    yield seconds


def _read_lag(redis: Any, inboxes: list[Inbox]) -> list[tuple[int, float]]:
    """Return (undecided entries, oldest's age in seconds) per inbox."""
    pipe = redis.pipeline(transaction=False)
    for inbox in inboxes:
        pipe.xinfo_groups(inbox.key)
        pipe.xpending(inbox.key, GROUP)
    replies = pipe.execute(raise_on_error=False)
    groups: list[tuple[Any, Any] | None] = []
    pipe = redis.pipeline(transaction=False)
    for inbox, info, pending in zip(inboxes, replies[::2], replies[1::2], strict=True):
        group = next((g for g in info if g["name"] in (GROUP, GROUP.encode())), None) \
            if isinstance(info, list) else None
        if group is None or isinstance(pending, Exception):
            groups.append(None)  # no group yet: the reducer has not booted on it
            continue
        after = group["last-delivered-id"]
        after = after.decode() if isinstance(after, bytes) else after
        lag = group.get("lag")  # Redis 7; None when it cannot tell (after a deletion)
        pipe.xrange(inbox.key, min=f"({after}", count=1 if lag is not None else _LAG_SCAN)
        groups.append((lag, pending))
    undelivered = pipe.execute() if len(pipe) else []
    now_ms = time.time_ns() // 1_000_000
    out: list[tuple[int, float]] = []
    rest = iter(undelivered)
    for found in groups:
        if found is None:
            out.append((0, 0.0))
            continue
        lag, pending = found
        after = next(rest)
        count = int(pending["pending"]) + (int(lag) if lag is not None else len(after))
        oldest = pending["min"] if pending["pending"] else (after[0][0] if after else None)
        out.append((count, stream_age_seconds(oldest, now_ms) if oldest else 0.0))
    return out
