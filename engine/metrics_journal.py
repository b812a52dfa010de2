"""Read metrics off the journal's own records: what a decided batch says, no clock, no I/O.

Workers and supervisors are separate processes (many, on many hosts): instead of a
registry of their own, what they did is read from the facts their reports became. Every
record carries `meta.at`, the causing command's issued-at time (the worker's clock for a
report), so the start saga's step durations are differences of timestamps already in
the journal: StartInitiated → RootfsMounted → SandboxCreated → NetworkConnected →
ContainerStarted. The reducer hands each written batch's records of these types
(NOTED) here; engine.metrics turns the observations into Prometheus series.
"""

from __future__ import annotations

from typing import NamedTuple

from events import model as e
from events.saga import ENDPOINT, MOUNT, REMOVE, SANDBOX, SPAWN

__all__ = ["NOTED", "STEP_OF", "TIMED", "Observation", "StartClock", "failure_step"]

# The step each saga fact completes (events.saga's names).
STEP_OF: dict[type, str] = {e.RootfsMounted: MOUNT, e.SandboxCreated: SANDBOX,
                            e.NetworkConnected: ENDPOINT, e.ContainerStarted: SPAWN}
_ENDS = (e.StartFailed, e.ContainerDied, e.ContainerDestroyed, e.RestartFailed)
TIMED: frozenset[type] = frozenset((e.StartInitiated, *STEP_OF, *_ENDS))  # StartClock's
# Every event type a metric reads; decide_batch keeps these records of a batch (a type
# lookup per record, the only cost in the fold).
NOTED: frozenset[type] = TIMED | {e.CommandRejected, e.RemovalFailed, e.FreezeFailed,
                                   e.ExecStarted, e.ExecDied}


class Observation(NamedTuple):
    """A start step's duration (`step` from events.saga, or "start" for the whole)."""

    step: str
    seconds: float


class StartClock:
    """Time each container's start saga from its records' timestamps.

    Only the attempts begun while this clock watched are timed: a reducer that takes
    over mid-saga has no StartInitiated to measure from, and skips that attempt.
    """

    def __init__(self) -> None:
        # container id -> (generation, StartInitiated's time, the last step's time), ns
        self._open: dict[str, tuple[int, int, int]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def note(self, record: e.EventRecord) -> tuple[Observation, ...]:
        """Return the durations a record completes (none for most records)."""
        event = record.event
        kind = type(event)
        step = STEP_OF.get(kind)
        meta = record.meta
        if step is None:
            if kind is e.StartInitiated:
                self._open[meta.container_id] = (event.generation, meta.at, meta.at)  # type: ignore[union-attr]
            elif kind in _ENDS:
                self._open.pop(meta.container_id, None)
            return ()
        began = self._open.get(meta.container_id)
        if began is None or began[0] != event.generation:  # type: ignore[union-attr]
            return ()  # another attempt's report (late, or before we watched)
        generation, first, last = began
        at = meta.at
        # Clocks of two hosts may disagree by a little: never a negative duration.
        done = Observation(step, (at - last) / 1e9 if at > last else 0.0)
        if kind is e.ContainerStarted:
            del self._open[meta.container_id]
            return done, Observation("start", (at - first) / 1e9 if at > first else 0.0)
        self._open[meta.container_id] = (generation, first, at)
        return (done,)


def failure_step(event: e.Event) -> str | None:
    """Return the host job a failure fact reports (its step), or None if not a failure."""
    if isinstance(event, e.StartFailed):
        return event.step
    if isinstance(event, e.RemovalFailed):
        return REMOVE
    if isinstance(event, e.FreezeFailed):
        return "pause" if event.frozen else "unpause"
    return None
