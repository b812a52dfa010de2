"""Move a journal between Redis and JSON Lines: export, import, and load into an empty shard.

Export format, one object per line: {"id": "<stream id>", "record": <EventRecord as JSON>}.
A load keeps the stream ids (so cursors, audit lines and verify stay meaningful) and then
rebuilds the snapshot by folding, the same way the reducer would have left it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any, NamedTuple

import msgspec
import redis as redislib

from commands.codec import CODEC, DecodeError
from engine.core.state import World
from engine.errors import Conflict, Internal, InvalidParameter, Unavailable
from engine.eventlog import BadEntry, OnBad
from engine.keys import Keys
from engine.snapshot import fold_for_snapshot, queue_snapshot_writes
from events.model import EventRecord
from projections.views.points import id_key, is_stream_id

__all__ = ["LoadResult", "export_jsonl", "import_jsonl", "load_into"]



class _Line(msgspec.Struct):
    id: str
    record: msgspec.Raw


_LINE = msgspec.json.Decoder(_Line)


def export_jsonl(records: Iterable[tuple[str, EventRecord]], fp: IO[str]) -> int:
    """Write one JSON object per record; return how many were written."""
    n = 0
    for stream_id, record in records:
        fp.write(f'{{"id":{json.dumps(stream_id)},"record":{CODEC.json(record).decode()}}}\n')
        n += 1
    return n


class _TypedLine(msgspec.Struct):
    id: str
    record: EventRecord


_TYPED_LINE = msgspec.json.Decoder(_TypedLine)
_CHUNK = 8192  # lines decoded by one C call on the fast path


def import_jsonl(fp: Iterable[str | bytes], on_bad: OnBad | None = None
                 ) -> Iterator[tuple[str, EventRecord]]:
    """Yield (stream id, record) from an export, reporting bad lines and going on.

    A bad line goes to `on_bad` as "line N" with the reason and is skipped. Ids must be
    complete and strictly increasing, as the stream will keep them. Lines are decoded a
    chunk at a time in one C call; a chunk with a bad line is redone line by line.
    """
    state = _Cursor()
    chunk: list[str] = []
    first = 1
    for lineno, raw in enumerate(fp, 1):
        chunk.append(raw.decode() if isinstance(raw, bytes) else raw)
        if len(chunk) >= _CHUNK:
            yield from _decode_chunk(chunk, first, state, on_bad)
            chunk, first = [], lineno + 1
    if chunk:
        yield from _decode_chunk(chunk, first, state, on_bad)


class _Cursor:
    """The last good id, as an ordered (ms, seq) pair."""

    last: tuple[int, int] = (0, 0)


def _fast_key(stream_id: str) -> tuple[int, int] | None:
    ms, dash, seq = stream_id.partition("-")
    if not dash or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def _decode_chunk(chunk: list[str], first: int, state: _Cursor, on_bad: OnBad | None
                  ) -> Iterator[tuple[str, EventRecord]]:
    text = "".join(line if line.endswith("\n") else line + "\n" for line in chunk)
    try:
        lines = _TYPED_LINE.decode_lines(text)
    except DecodeError:
        lines = None
    if lines is not None and len(lines) == len(chunk):
        last = state.last
        for offset, line in enumerate(lines):
            key = _fast_key(line.id)
            if key is None or key <= last or key == (0, 0):
                _checked_key(line.id, last, f"line {first + offset}", on_bad)
                continue
            last = key
            yield line.id, line.record
        state.last = last
        return
    for offset, raw in enumerate(chunk):  # slow path: say which line and why
        if not raw.strip():
            continue
        decoded = _decode_line(raw, state.last, f"line {first + offset}", on_bad)
        if decoded is not None:
            state.last = id_key(decoded[0])
            yield decoded


def _checked_key(stream_id: str, last: tuple[int, int], where: str,
                 on_bad: OnBad | None) -> tuple[int, int] | None:
    if not is_stream_id(stream_id) or stream_id == "0-0":
        _report(on_bad, where, f"invalid stream id {stream_id!r}")
        return None
    key = id_key(stream_id)
    if key <= last:
        _report(on_bad, where, f"stream id {stream_id} is not after the previous line's")
        return None
    return key


def _decode_line(text: str, last: tuple[int, int], where: str,
                 on_bad: OnBad | None) -> tuple[str, EventRecord] | None:
    try:
        line = _LINE.decode(text)
    except DecodeError as exc:
        _report(on_bad, where, f"not an export line: {exc}")
        return None
    if _checked_key(line.id, last, where, on_bad) is None:
        return None
    try:
        return line.id, CODEC.record_json(line.record)
    except DecodeError as exc:
        _report(on_bad, where, f"invalid record: {exc}")
        return None


def _report(on_bad: OnBad | None, where: str, reason: str) -> None:
    if on_bad is not None:
        on_bad(BadEntry(where, reason))


class LoadResult(NamedTuple):
    """What a load wrote: how many entries, the last id (the checkpoint) and the World."""

    loaded: int
    last_id: str
    world: World


def load_into(redis: Any, keys: Keys, records: Iterable[tuple[str, EventRecord]]
              ) -> LoadResult:
    """Append records with their own ids to an EMPTY events stream and rebuild the snapshot.

    Refuses (Conflict) when the stream already holds entries. Run it with the engine
    stopped: everything is written in one MULTI, watched against concurrent appends.
    """
    items = list(records)
    last: tuple[int, int] = (0, 0)
    for stream_id, _ in items:
        if not is_stream_id(stream_id) or id_key(stream_id) <= last:
            # Checked before writing: a failed XADD inside MULTI would not undo the others.
            raise InvalidParameter(f"cannot import: stream id {stream_id!r} is not valid "
                                   "or not after the one before it")
        last = id_key(stream_id)
    world, versions, checkpoint = fold_for_snapshot(items)
    try:
        with redis.pipeline(transaction=True) as pipe:
            pipe.watch(keys.events)
            held = pipe.xlen(keys.events) if pipe.exists(keys.events) else 0
            if held:
                raise Conflict(f"cannot import: the events stream {keys.events} already "
                               f"holds {held} entries; import needs an empty journal")
            if not items:
                return LoadResult(0, checkpoint, world)
            pipe.multi()
            for stream_id, record in items:
                pipe.xadd(keys.events, {"d": CODEC.encode(record)}, id=stream_id)
            queue_snapshot_writes(pipe, keys, world, versions, checkpoint)
            pipe.execute()
    except redislib.WatchError:
        raise Conflict("cannot import: the events stream changed during the import") from None
    except (redislib.ConnectionError, redislib.TimeoutError) as exc:
        raise Unavailable(f"cannot reach the engine's Redis: {exc}") from exc
    except redislib.RedisError as exc:
        raise Internal(f"import failed: {exc}") from exc
    return LoadResult(len(items), checkpoint, world)
