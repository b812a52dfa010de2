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

from engine.errors import Conflict, Internal, InvalidParameter, Unavailable
from engine.keys import Keys
from engine.snapshot import fold_for_snapshot, queue_snapshot_writes
from engine.state import World
from events.codec import CODEC, DecodeError
from events.model import EventRecord
from projections.points import id_key, is_stream_id
from projections.stream import BadEntry, OnBad

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


def import_jsonl(fp: Iterable[str | bytes], on_bad: OnBad | None = None
                 ) -> Iterator[tuple[str, EventRecord]]:
    """Yield (stream id, record) from an export, reporting bad lines and going on.

    A bad line goes to `on_bad` as "line N" with the reason and is skipped. Ids must be
    complete and strictly increasing, as the stream will keep them.
    """
    last: tuple[int, int] = (0, 0)
    for lineno, raw in enumerate(fp, 1):
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        where = f"line {lineno}"
        try:
            line = _LINE.decode(text)
        except DecodeError as exc:
            _report(on_bad, where, f"not an export line: {exc}")
            continue
        if not is_stream_id(line.id) or line.id == "0-0":
            _report(on_bad, where, f"invalid stream id {line.id!r}")
            continue
        key = id_key(line.id)
        if key <= last:
            _report(on_bad, where, f"stream id {line.id} is not after the previous line's")
            continue
        try:
            record = CODEC.record_json(line.record)
        except DecodeError as exc:
            _report(on_bad, where, f"invalid record: {exc}")
            continue
        last = key
        yield line.id, record


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
