"""The `moor watch` view: each recorded event with the container's status after it (pure)."""

from __future__ import annotations

import typing
from collections.abc import Collection
from typing import Any

import msgspec

from engine.core.evolve import evolve
from engine.core.state import World, status_of
from engine.errors import InvalidParameter
from events import model as e
from projections.views.feed import FeedState, observe
from projections.views.points import rfc3339_millis, rfc3339_nano

__all__ = ["EVENT_TYPES", "ChangeView", "check_event_types", "format_change"]

EVENT_TYPES: tuple[str, ...] = tuple(t.__name__ for t in typing.get_args(e.Event))


def check_event_types(types: Collection[str]) -> None:
    """Raise InvalidParameter for an event type moorage does not record."""
    for t in types:
        if t not in EVENT_TYPES:
            raise InvalidParameter(f"unknown event type {t!r}: one of {', '.join(EVENT_TYPES)}")


class ChangeView:
    """Fold records into a World (the reducer's evolve) and describe each one as a change."""

    def __init__(self, world: World | None = None, container: str = "",
                 types: Collection[str] = ()) -> None:
        self.world = world if world is not None else World()
        self.names = FeedState.from_world(self.world)
        self.container = container
        self.types = frozenset(types)
        check_event_types(self.types)

    def apply(self, stream_id: str, record: e.EventRecord, show: bool = True
              ) -> dict[str, Any] | None:
        """Fold one record; return its change row if shown and it passes the filters."""
        evolve(self.world, record)
        observe(self.names, record)
        if not show:
            return None
        cid = record.meta.container_id
        known = self.names.containers.get(cid)
        name = known.name if known else ""
        event_type = type(record.event).__name__
        if self.types and event_type not in self.types:
            return None
        if self.container and not (cid.startswith(self.container) or
                                   name == self.container.lstrip("/")):
            return None
        ctr = self.world.containers.get(cid)
        if ctr is not None:
            status = status_of(ctr)
        else:
            status = "removed" if cid in self.world.destroyed else ""
        return {
            "id": stream_id,
            "time": rfc3339_nano(record.meta.at),
            "at": record.meta.at,
            "container": cid,
            "name": name,
            "type": event_type,
            "status": status,
            "version": record.meta.version,
            "principal": record.meta.principal,  # who wrote the command (authenticated)
            "actor": record.meta.actor,  # who it said it acts for
            "cause": record.meta.command_id,
            "reason": record.meta.reason,
            "event": msgspec.to_builtins(record.event),
        }


def format_change(row: dict[str, Any]) -> str:
    """Render a change: <time> <short id> <name> <EventType> <status after> [message]."""
    line = (f"{rfc3339_millis(row['at'])} {row['container'][:12] or '-'} {row['name'] or '-'} "
            f"{row['type']} {row['status'] or '-'}")
    event = row["event"]
    if row["type"] == "CommandRejected":
        line += f" ({event['status']}: {event['message']})"
    elif row["type"] in ("StartFailed", "RemovalFailed"):
        line += f" ({event['error']})"
    return line
