"""Audit: replay the journal with the reducer's own `evolve`, print its timeline, verify it.

Replay is deterministic (times and ids are in the records), so folding the same records
must give exactly the live state; `verify` lists every difference.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from engine.core.evolve import evolve
from engine.core.state import World
from events import model as e
from projections.journal import export_jsonl, import_jsonl, load_into
from projections.views.points import id_key, id_ms, rfc3339_millis

__all__ = [
    "TimelineEntry",
    "export_jsonl",
    "format_entry",
    "import_jsonl",
    "load_into",
    "replay",
    "verify",
]


class TimelineEntry(NamedTuple):
    """One line of the audit timeline: what was recorded, when, for whom, and why.

    `principal` is who wrote the command as the engine authenticated it (the stream it
    came from; "" in records from before principals), `actor` who the writer said it acts
    for (`moor --actor`, the API's peer credentials).
    """

    stream_id: str
    recorded_ns: int  # the stream id's time: when the reducer wrote it
    at_ns: int  # the causing command's issued-at
    container_id: str
    version: int
    event_type: str
    principal: str
    actor: str
    cause: str
    reason: str
    detail: str  # rejection message, ignored report, failure; "" for plain facts

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict."""
        return self._asdict()


def _detail(ev: e.Event) -> str:
    if isinstance(ev, e.CommandRejected):
        rule = f" [rule {ev.rule}]" if ev.rule else ""
        return f"rejected {ev.command} {ev.status}{rule}: {ev.message}"
    if isinstance(ev, e.ReportIgnored):
        return f"ignored {ev.report} generation={ev.generation}: {ev.reason}"
    if isinstance(ev, e.StartFailed):
        return f"step={ev.step} exit={ev.exit_code}: {ev.error}"
    if isinstance(ev, e.RemovalFailed):
        return ev.error
    return ""


def _entry(stream_id: str, record: e.EventRecord) -> TimelineEntry:
    meta = record.meta
    return TimelineEntry(stream_id, id_ms(stream_id) * 1_000_000, meta.at, meta.container_id,
                         meta.version, type(record.event).__name__, meta.principal,
                         meta.actor, meta.command_id, meta.reason, _detail(record.event))


def _field(value: str) -> str:
    # Keep the line splittable on spaces: empty is "-", anything with spaces is quoted.
    if not value:
        return "-"
    if any(ch.isspace() or ch == '"' for ch in value):
        return json.dumps(value, ensure_ascii=False)
    return value


def format_entry(entry: TimelineEntry) -> str:
    """Render a timeline line: id time container vN Type [principal=] actor= cause= reason=
    [detail] (principal= only for records that carry one)."""
    short = entry.container_id[:12] or "-"
    who = f"principal={_field(entry.principal)} " if entry.principal else ""
    line = (f"{entry.stream_id} {rfc3339_millis(entry.recorded_ns)} {short} v{entry.version} "
            f"{entry.event_type} {who}actor={_field(entry.actor)} cause={_field(entry.cause)} "
            f"reason={_field(entry.reason)}")
    return f"{line} {entry.detail}" if entry.detail else line


def replay(records: Iterable[tuple[str, e.EventRecord]], until_id: str | None = None,
           until_ns: int | None = None, world: World | None = None
           ) -> tuple[World, list[TimelineEntry]]:
    """Fold records with engine.core.evolve up to an id and/or a recorded time (both inclusive)."""
    world = world if world is not None else World()
    limit = id_key(until_id, upper=True) if until_id else None
    limit_ms = until_ns // 1_000_000 if until_ns is not None else None
    timeline: list[TimelineEntry] = []
    for stream_id, record in records:
        key = id_key(stream_id)
        if limit is not None and key > limit:
            break
        if limit_ms is not None and key[0] > limit_ms:
            break
        evolve(world, record)
        timeline.append(_entry(stream_id, record))
    return world, timeline


_MISSING = object()


def _show(value: Any) -> str:
    return "(default)" if value is _MISSING else json.dumps(value, sort_keys=True)


def _diff_maps(what: str, replayed: Mapping[str, Any], live: Mapping[str, Any],
               out: list[str]) -> None:
    for key in sorted(replayed.keys() | live.keys()):
        a = replayed.get(key, _MISSING)
        b = live.get(key, _MISSING)
        if a is _MISSING:
            out.append(f"{what} {key}: only in the live state")
        elif b is _MISSING:
            out.append(f"{what} {key}: only in the replay")
        elif a != b:
            out.append(f"{what} {key}: replay={_show(a)} live={_show(b)}")


def verify(replayed: World, live: World) -> list[str]:
    """Return every difference between a replayed World and the live one ([] = equal)."""
    out: list[str] = []
    a = msgspec.to_builtins(replayed.containers)
    b = msgspec.to_builtins(live.containers)
    for cid in sorted(a.keys() | b.keys()):
        if cid not in b:
            out.append(f"container {cid}: only in the replay")
        elif cid not in a:
            out.append(f"container {cid}: only in the live state")
        else:
            # Fields at their default are omitted by the encoder on both sides alike.
            for name in sorted(a[cid].keys() | b[cid].keys()):
                x, y = a[cid].get(name, _MISSING), b[cid].get(name, _MISSING)
                if x != y:
                    out.append(f"container {cid} {name}: replay={_show(x)} live={_show(y)}")
    _diff_maps("image", msgspec.to_builtins(replayed.images),
               msgspec.to_builtins(live.images), out)
    _diff_maps("network", msgspec.to_builtins(replayed.networks),
               msgspec.to_builtins(live.networks), out)
    _diff_maps("name", replayed.names, live.names, out)
    _diff_maps("tag", replayed.tags, live.tags, out)
    _diff_maps("address", replayed.addresses, live.addresses, out)
    _diff_maps("host", msgspec.to_builtins(replayed.hosts), msgspec.to_builtins(live.hosts),
               out)
    for cid in sorted(replayed.destroyed - live.destroyed):
        out.append(f"destroyed {cid}: only in the replay")
    for cid in sorted(live.destroyed - replayed.destroyed):
        out.append(f"destroyed {cid}: only in the live state")
    return out
