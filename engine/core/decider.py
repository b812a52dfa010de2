"""Stamp decisions into records and fold them: the one path from command to new state."""

from __future__ import annotations

from typing import NamedTuple

from commands.codec import CommandResult
from commands.schema import Command, Envelope
from engine.core.admission import Origin
from engine.core.decide import decide
from engine.core.evolve import evolve
from engine.core.state import World
from events import model as e

__all__ = ["Outcome", "apply_command", "decide_records"]


class Outcome(NamedTuple):
    """What one command produced: the target, its records and the client's result."""

    container_id: str
    expected_version: int  # the container's version before (-1: no container yet)
    records: list[e.EventRecord]
    result: CommandResult


def decide_records(world: World, env: Envelope, cmd: Command,
                   origin: Origin | None = None) -> Outcome:
    """Decide, and stamp each event with its envelope, the principal the command came
    from (`origin`, as the reducer authenticated it) and the container's next version."""
    cid, events = decide(world, env, cmd, origin)
    ctr = world.containers.get(cid) if cid else None
    expected = ctr.version if ctr is not None else -1
    version = max(expected, 0)
    has_container = ctr is not None
    # The envelope's part of every record's meta, read once per command (this runs for
    # every command the reducer folds).
    command_id = env.command_id
    at, actor, reason = env.issued_at, env.actor, env.reason
    principal = origin.principal if origin is not None else ""
    correlation_id = env.correlation_id or command_id
    records = []
    for event in events:
        if not has_container and type(event) is e.ContainerCreated:
            has_container = True
        if has_container:
            version += 1
        meta = e.EventMeta(container_id=cid, version=version if has_container else 0,
                           command_id=command_id, at=at, principal=principal,
                           actor=actor, reason=reason,
                           correlation_id=correlation_id)
        records.append(e.EventRecord(meta=meta, event=event))
    first = events[0] if events else None
    rejected = first if len(events) == 1 and type(first) is e.CommandRejected else None
    result = CommandResult(
        command_id=command_id,
        ok=rejected is None,
        status=rejected.status if rejected else 200,
        message=rejected.message if rejected else "",
        container_id=cid,
        version=version if has_container else 0,
        events=tuple([type(ev).__name__ for ev in events]),
    )
    return Outcome(cid, expected, records, result)


def apply_command(world: World, env: Envelope, cmd: Command,
                  origin: Origin | None = None) -> Outcome:
    """Decide a command and fold its records into the world (the reducer's step)."""
    outcome = decide_records(world, env, cmd, origin)
    for record in outcome.records:
        evolve(world, record)
    return outcome
