"""`moor` subcommands of the read side: ps, inspect, watch, events, replay, export, import.

Each handler reads Redis through the stream/snapshot adapters, calls the pure projections,
and prints a human table by default or JSON with `--format json`. Handlers return the exit
code; errors go through moor.failures (Docker's `Error response from daemon: <message>`).
The projections and Redis load when a handler runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from moor.failures import guard, print_error

if TYPE_CHECKING:
    from engine.eventlog import BadEntry
    from engine.keys import Keys
    from events.model import EventRecord
    from projections.views.points import Point

__all__ = ["GetRedis", "register", "follow_changes"]

GetRedis = Callable[[], tuple[Any, "Keys"]]


def _warn_bad(bad: BadEntry) -> None:
    print(f"warning: skipped {bad}", file=sys.stderr)


def _json_line(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


# --- ps / inspect -----------------------------------------------------------------------

def _sharded(args: argparse.Namespace) -> dict[str, tuple[Any, Keys]] | None:
    """Every shard's (redis, keys) in a sharded deployment (MOOR_SHARDS > 1), else None."""
    from engine.config import shard_count

    if shard_count() == 1:
        return None
    from moor.connect import shard_stores

    return shard_stores(getattr(args, "redis_url", None))


def _live_world(get: GetRedis, args: argparse.Namespace) -> Any:
    """The live state to read: the shard's, or every shard's merged (projections.stream)."""
    from projections.stream import load_live, load_live_all

    stores = _sharded(args)
    if stores is not None:
        return load_live_all(stores)
    return load_live(*get())[0]


def _ps(get: GetRedis, args: argparse.Namespace) -> int:
    from projections.views.filters import parse_filter_flags
    from projections.views.ps import format_table, list_containers

    world = _live_world(get, args)
    limit = 1 if args.latest else args.last
    items = list_containers(world, args.all, parse_filter_flags(args.filter), limit,
                            now_ns=time.time_ns())
    if args.quiet:
        for item in items:
            print(item["Id"] if args.no_trunc else item["Id"][:12])
    elif args.format == "json":
        for item in items:
            _json_line(item)
    else:
        print(format_table(items, time.time_ns(), no_trunc=args.no_trunc))
    return 0


def _inspect(get: GetRedis, args: argparse.Namespace) -> int:
    from engine.errors import InvalidParameter, NotFound
    from projections.views.inspect import (
        find_container,
        find_image,
        inspect_container,
        inspect_image,
    )

    world = _live_world(get, args)
    docs: list[dict[str, Any]] = []
    failed = False
    for ref in args.refs:
        try:
            if args.type == "image":
                docs.append(inspect_image(world, find_image(world, ref)))
            else:
                docs.append(inspect_container(world, find_container(world, ref), time.time_ns()))
        except (NotFound, InvalidParameter) as err:
            print_error(err.message)
            failed = True
    print(json.dumps(docs, indent=4, ensure_ascii=False))
    return 1 if failed else 0


# --- watch / events -----------------------------------------------------------------------

def _since_key(point: Point) -> tuple[int, int]:
    from projections.views.points import id_key

    # An id is a resume cursor (strictly after it); a time includes its own ms.
    if point.stream_id is not None:
        ms, seq = id_key(point.stream_id, upper=True)
        return (ms, seq + 1)
    return point.key(upper=False)


def follow_changes(redis: Any, keys: Keys, since: Point | None, *, container: str = "",
                   types: Iterable[str] = (), block_ms: int = 1000,
                   stop: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Yield watch rows from `since` (None = from now on), following the stream forever."""
    from engine.eventlog import read_records
    from projections.stream import load_live, watch
    from projections.views.changes import ChangeView
    from projections.views.points import id_key

    types = tuple(types)
    if since is None:
        world, checkpoint = load_live(redis, keys)
        view = ChangeView(world, container, types)
        cursor = checkpoint
        history = read_records(redis, keys, start=f"({checkpoint}", on_bad=_warn_bad)
        first: tuple[int, int] | None = None  # catch up quietly to the tail
    else:
        view = ChangeView(None, container, types)
        cursor = "0-0"
        history = read_records(redis, keys, on_bad=_warn_bad)
        first = _since_key(since)
    for stream_id, record in history:
        cursor = stream_id
        row = view.apply(stream_id, record, show=first is not None and id_key(stream_id) >= first)
        if row is not None:
            yield row
    for stream_id, record in watch(redis, keys, cursor, block_ms=block_ms, stop=stop,
                                   on_bad=_warn_bad):
        row = view.apply(stream_id, record)
        if row is not None:
            yield row


def _watch(get: GetRedis, args: argparse.Namespace) -> int:
    from projections.views.changes import format_change
    from projections.views.points import parse_point

    since = parse_point(args.since, time.time_ns()) if args.since else None
    stores = _sharded(args)
    if stores is None:
        rows = follow_changes(*get(), since, container=args.container or "",
                              types=args.type or ())
    else:
        from projections.stream import merged

        rows = merged(follow_changes(redis, keys, since, container=args.container or "",
                                     types=args.type or ())
                      for redis, keys in stores.values())
    for row in rows:
        if args.format == "json":
            _json_line(row)
        else:
            print(format_change(row), flush=True)
    return 0


def _tracked(records: Iterable[tuple[str, EventRecord]], cursor: list[str]
             ) -> Iterator[tuple[str, EventRecord]]:
    for stream_id, record in records:
        cursor[0] = stream_id
        yield stream_id, record


def _print_event(args: argparse.Namespace, ev: dict[str, Any]) -> None:
    from projections.views.feed import format_event

    if args.format == "json":
        _json_line(ev)
    else:
        print(format_event(ev), flush=True)


def _events(get: GetRedis, args: argparse.Namespace) -> int:
    from engine.errors import InvalidParameter
    from engine.eventlog import read_records
    from projections.stream import load_live, watch
    from projections.views.feed import FeedState, event_filter, feed
    from projections.views.filters import parse_filter_flags
    from projections.views.points import id_key, parse_point

    now = time.time_ns()
    since = parse_point(args.since, now) if args.since else None
    until = parse_point(args.until, now) if args.until else None
    if since and until and since.key(upper=False) > until.key(upper=True):
        raise InvalidParameter(f"`since` ({args.since}) cannot be after `until` ({args.until})")
    filters = parse_filter_flags(args.filter)
    event_filter(filters)  # validate before touching Redis
    redis, keys = get()
    cursor = ["0-0"]
    if since is None and until is None:
        # Only what happens from now on: start at the snapshot, fold the rest quietly.
        world, checkpoint = load_live(redis, keys)
        state = FeedState.from_world(world)
        cursor[0] = checkpoint
        history = read_records(redis, keys, start=f"({checkpoint}", on_bad=_warn_bad)
        first: tuple[int, int] | None = None
    else:
        # Names and images of old events need the whole fold, shown from `since` on.
        state = FeedState()
        first = _since_key(since) if since else (0, 0)
        history = read_records(redis, keys, end=until.end_bound() if until else "+",
                               on_bad=_warn_bad)

    def shown(stream_id: str) -> bool:
        return first is not None and id_key(stream_id) >= first

    for _, ev in feed(_tracked(history, cursor), state, filters, shown):
        _print_event(args, ev)
    if until is not None and (until.ns is None or until.ns <= time.time_ns()):
        return 0
    # Follow new events, forever or (like Docker) until a future --until time.
    deadline = until.ns if until is not None else None

    def past_deadline() -> bool:
        return deadline is not None and time.time_ns() > deadline

    end_key = until.key(upper=True) if until else None
    # Short blocks when a deadline is set, so the command ends soon after it.
    live = watch(redis, keys, cursor[0], block_ms=200 if deadline else 1000,
                 stop=past_deadline, on_bad=_warn_bad)
    for stream_id, ev in feed(live, state, filters):
        if end_key is not None and id_key(stream_id) > end_key:
            break
        _print_event(args, ev)
    return 0


# --- replay / export / import ---------------------------------------------------------------

def _replay(get: GetRedis, args: argparse.Namespace) -> int:
    """Replay (and verify) the journal; in a sharded deployment, each shard's in turn."""
    stores = None if args.file else _sharded(args)
    if stores is None:
        return _replay_one(get, args)
    status = 0
    for shard in sorted(stores, key=int):
        if args.format != "json":
            print(f"shard {shard}:")
        status |= _replay_one(lambda store=stores[shard]: store, args)
    return status


def _replay_one(get: GetRedis, args: argparse.Namespace) -> int:
    from engine.core.state import World
    from engine.errors import InvalidParameter
    from engine.eventlog import read_records
    from projections.audit import format_entry, replay, verify
    from projections.journal import import_jsonl
    from projections.stream import load_live
    from projections.views.points import parse_point

    until = parse_point(args.until, time.time_ns()) if args.until else None
    if args.verify and until is not None:
        raise InvalidParameter("--verify compares the whole journal with the live state; "
                               "drop --until")
    bad: list[BadEntry] = []
    live: World | None = None
    checkpoint = "+"
    if args.verify or not args.file:
        redis, keys = get()
        if args.verify:
            live, checkpoint = load_live(redis, keys)
    if args.file:
        with open(args.file, encoding="utf-8") as fp:
            world, timeline = replay(import_jsonl(fp, on_bad=bad.append),
                                     until.stream_id if until else None,
                                     until.ns if until else None)
    else:
        records = read_records(redis, keys, end=checkpoint if args.verify else "+",
                               on_bad=bad.append)
        world, timeline = replay(records, until.stream_id if until else None,
                                 until.ns if until else None)
    for entry in timeline:
        if args.format == "json":
            _json_line(entry.as_dict())
        else:
            print(format_entry(entry))
    for item in bad:
        _warn_bad(item)
    if live is None:
        return 1 if bad else 0
    diffs = verify(world, live)
    if args.format == "json":
        _json_line({"verify": {"ok": not diffs, "checkpoint": checkpoint,
                               "differences": diffs}})
    elif diffs:
        print(f"verify: {len(diffs)} difference(s) between the replay and the live state:")
        for line in diffs:
            print(f"  {line}")
    else:
        print(f"verify: OK: the replay of {len(timeline)} events equals the live state "
              f"at {checkpoint}")
    return 1 if diffs or bad else 0


def _export(get: GetRedis, args: argparse.Namespace) -> int:
    from engine.eventlog import read_records
    from projections.journal import export_jsonl

    redis, keys = get()
    bad: list[BadEntry] = []
    records = read_records(redis, keys, on_bad=bad.append)
    if args.output and args.output != "-":
        with open(args.output, "w", encoding="utf-8") as fp:
            count = export_jsonl(records, fp)
        print(f"exported {count} events to {args.output}", file=sys.stderr)
    else:
        export_jsonl(records, sys.stdout)
    for item in bad:
        _warn_bad(item)
    return 1 if bad else 0  # an export that skipped entries is not a faithful copy


def _import(get: GetRedis, args: argparse.Namespace) -> int:
    from projections.journal import import_jsonl, load_into

    bad: list[BadEntry] = []
    with open(args.file, encoding="utf-8") as fp:
        records = list(import_jsonl(fp, on_bad=bad.append))
    for item in bad:
        print(f"error: {args.file}: {item}", file=sys.stderr)
    if bad and not args.skip_bad:
        print(f"nothing imported: {len(bad)} bad line(s); fix them or pass --skip-bad",
              file=sys.stderr)
        return 1
    redis, keys = get()
    result = load_into(redis, keys, records)
    print(f"imported {result.loaded} events into {keys.events}; checkpoint {result.last_id}")
    return 0


def _from_flags(args: argparse.Namespace, lite: bool = False, role: str | None = None
                ) -> GetRedis:
    def get() -> tuple[Any, Keys]:
        from moor.connect import redis_and_keys

        return redis_and_keys(getattr(args, "redis_url", None), lite=lite, role=role)
    return get


# --- registration -----------------------------------------------------------------------------

def register(subparsers: Any, get_redis_and_keys: GetRedis | None = None) -> None:
    """Add the read-side subcommands; each sets `func(args) -> exit code`.

    Redis comes from `get_redis_and_keys` when given (tests pass their own), else from
    the command line's --redis-url (or MOOR_REDIS_URL, or the embedded server).
    """
    def add(name: str, fn: Callable[[GetRedis, argparse.Namespace], int],
            help_text: str, lite: bool = False, role: str | None = None
            ) -> argparse.ArgumentParser:
        """`lite`: a one-shot snapshot read, served by engine.resp (moor.connect); `role`:
        the Redis user it needs (moor.connect; default: the control principal)."""
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text,
                                                                description=help_text)

        def handler(args: argparse.Namespace) -> int:
            return fn(get_redis_and_keys or _from_flags(args, lite, role), args)
        # Following a stream until Ctrl-C is how watch/events end: not a failure.
        parser.set_defaults(func=guard(handler, interrupt_code=0))
        return parser

    p = add("ps", _ps, "List containers", lite=True)
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container ids")
    p.add_argument("-n", "--last", type=int, default=None, help="show n last created")
    p.add_argument("-l", "--latest", action="store_true", help="show the latest created")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("inspect", _inspect, "Show containers' (or images') Docker inspect documents",
            lite=True)
    p.add_argument("refs", nargs="+", metavar="NAME|ID")
    p.add_argument("--type", choices=("container", "image"), default="container")
    p.add_argument("-f", "--format", choices=("json",), default="json")

    p = add("watch", _watch, "Print each state change as it happens")
    p.set_defaults(long_running=True)
    p.add_argument("--since", help="stream id (after it) or time: unix s, RFC3339, 10m")
    p.add_argument("--container", help="container id prefix or name")
    p.add_argument("--type", action="append", default=[], metavar="EVENT_TYPE")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = add("events", _events, "Print docker-events-shaped events")
    p.set_defaults(long_running=True)
    p.add_argument("--since", help="stream id or time: unix s, RFC3339, 10m")
    p.add_argument("--until", help="stream id or time; stop there")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = add("replay", _replay, "Replay the journal with the reducer's evolve; print the timeline")
    p.add_argument("--until", help="stream id or time (inclusive)")
    p.add_argument("--file", help="replay an export (JSON Lines) instead of Redis")
    p.add_argument("--verify", action="store_true",
                   help="compare with the live state; exit 1 on any difference")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = add("export", _export, "Write the events stream as JSON Lines")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")

    p = add("import", _import, "Load an export into an empty events stream and rebuild state",
            role="admin")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--skip-bad", action="store_true", help="import despite bad lines")
