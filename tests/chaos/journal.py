"""The journal read back from Redis, violations, and excerpts that explain them.

A violation names its invariant, the container (when there is one) and what was seen;
the report prints each with the last journal records of that container, so whoever
reads it can tell which finding it is without rerunning anything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgspec

from commands.codec import CODEC
from engine.keys import Keys
from events import model as e

__all__ = ["Journal", "Violation", "describe", "newer", "read_journal"]

Entry = tuple[str, e.EventRecord]


@dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    invariant: str
    container: str  # full id, or "" for engine-wide findings
    detail: str
    excerpt: str = ""

    def render(self) -> str:
        who = f" container {self.container[:12]}" if self.container else ""
        text = f"[{self.invariant}]{who}: {self.detail}"
        if self.excerpt:
            text += "\n" + "\n".join(f"    {line}" for line in self.excerpt.splitlines())
        return text


def read_journal(redis: Any, keys: Keys, page: int = 5000) -> list[Entry]:
    """Read the whole events stream, in order, decoding each record."""
    out: list[Entry] = []
    cursor = "-"
    while True:
        batch = redis.xrange(keys.events, min=cursor, count=page)
        for entry_id, fields in batch:
            out.append((entry_id.decode(), CODEC.record(fields[b"d"])))
        if len(batch) < page:
            return out
        cursor = f"({batch[-1][0].decode()}"


def describe(record: e.EventRecord) -> str:
    """One line per record: version, tag, the payload's short fields, command and actor."""
    event = record.event
    fields = []
    for name, value in msgspec.structs.asdict(event).items():
        if isinstance(value, str | int | bool) and name not in ("created",):
            # Errors and messages are what a reader needs in full; ids and paths are long
            # and repeat the container's id.
            text, room = str(value), 160 if name in ("error", "message", "detail") else 40
            fields.append(f"{name}={text[:room]}")
    meta = record.meta
    return (f"v{meta.version} {type(event).__name__}({', '.join(fields)}) "
            f"cmd={meta.command_id[:48]} actor={meta.actor}")


class Journal:
    """The events stream, indexed by container and by command id."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.by_container: dict[str, list[Entry]] = defaultdict(list)
        self.by_command: dict[str, list[int]] = defaultdict(list)  # positions
        for pos, (entry_id, record) in enumerate(entries):
            cid = record.meta.container_id or getattr(record.event, "container_id", "")
            if cid:
                self.by_container[cid].append((entry_id, record))
            self.by_command[record.meta.command_id].append(pos)

    def excerpt(self, cid: str, last: int = 14, around: str | None = None) -> str:
        """Return the container's last records (or those around an entry id), one a line."""
        records = self.by_container.get(cid, [])
        if around is not None:
            ids = [entry_id for entry_id, _ in records]
            at = ids.index(around) if around in ids else len(records)
            records = records[max(0, at - last // 2): at + last // 2 + 1]
        else:
            records = records[-last:]
        skipped = len(self.by_container.get(cid, [])) - len(records)
        head = [f"(journal of {cid[:12]}: {skipped} earlier records not shown)"] if skipped else []
        return "\n".join(head + [f"{entry_id} {describe(r)}" for entry_id, r in records])

    def created(self) -> list[str]:
        """Return every container id the journal saw created, in order."""
        return [r.meta.container_id for _, r in self.entries
                if isinstance(r.event, e.ContainerCreated)]

    def after(self, mark: str) -> list[Entry]:
        """Return the records after a stream id."""
        return [(i, r) for i, r in self.entries if newer(i, mark)]


def newer(entry_id: str, mark: str) -> bool:
    """Tell whether a stream id comes after another."""
    a_ms, _, a_seq = entry_id.partition("-")
    b_ms, _, b_seq = mark.partition("-")
    return (int(a_ms), int(a_seq or 0)) > (int(b_ms), int(b_seq or 0))
