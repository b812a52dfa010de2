"""Projections against storage: a real Redis server and fakeredis, with the same tests.

Records are produced by the pure decider (tests.unit.test_projections.Journal) and written
into the events stream here, as the reducer would (field `d` = msgpack EventRecord).
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import msgspec
import pytest
import redis

from commands import schema as c
from commands.codec import CODEC
from engine.errors import Conflict
from engine.eventlog import BadEntry, read_records
from engine.keys import Keys, keys_for
from engine.snapshot import load_world
from events.model import EventRecord
from moor import readcli as cli
from projections.audit import export_jsonl, import_jsonl, load_into, replay, verify
from projections.stream import tail_id, watch
from tests.unit.test_projections import A, B, Journal, scenario


@dataclass
class Store:
    """A Redis client, a private key prefix, and a way to open more clients to the same data."""

    client: Any
    keys: Keys
    connect: Callable[[], Any]

    def fresh_keys(self) -> Keys:
        """Return another private prefix on the same server (cleaned up with the store)."""
        keys = keys_for(prefix=f"moortest:{uuid.uuid4().hex}")
        self._extra.append(keys)
        return keys

    def __post_init__(self) -> None:
        self._extra: list[Keys] = []

    def cleanup(self) -> None:
        for keys in [self.keys, *self._extra]:
            for key in self.client.scan_iter(match=f"{keys.prefix}:*"):
                self.client.delete(key)


@pytest.fixture(params=["redis", "fakeredis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each test runs once against the session's real redis-server and once on fakeredis."""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")

        def connect() -> Any:
            return redis.Redis.from_url(server.url)
    else:
        fake_server = fakeredis.FakeServer()

        def connect() -> Any:
            return fakeredis.FakeRedis(server=fake_server)
    client = connect()
    s = Store(client, keys_for(prefix=f"moortest:{uuid.uuid4().hex}"), connect)
    yield s
    s.cleanup()
    client.close()


def write(store: Store, entries: list[tuple[str, EventRecord]], keys: Keys | None = None,
          keep_ids: bool = True) -> list[str]:
    """Append records to the events stream like the reducer (auto ids unless kept)."""
    ids = []
    for stream_id, record in entries:
        added = store.client.xadd((keys or store.keys).events, {"d": CODEC.encode(record)},
                                  id=stream_id if keep_ids else "*")
        ids.append(added.decode())
    return ids


def test_read_records_pages_and_reports_bad_entries(store: Store) -> None:
    j = scenario()
    write(store, j.entries[:5])
    store.client.xadd(store.keys.events, {"d": b"\xc1garbage"}, id="1800000000000-0")
    store.client.xadd(store.keys.events, {"x": b"1"}, id="1800000000000-1")
    write(store, [(f"1800000000001-{i}", r) for i, (_, r) in enumerate(j.entries[5:])])
    bad: list[BadEntry] = []
    got = list(read_records(store.client, store.keys, count=3, on_bad=bad.append))
    assert [r for _, r in got] == [r for _, r in j.entries]
    assert [b.where for b in bad] == ["1800000000000-0", "1800000000000-1"]
    assert "undecodable" in bad[0].reason and "missing field 'd'" in bad[1].reason
    assert tail_id(store.client, store.keys) == got[-1][0]
    # Bounds are inclusive, "(" excludes: a resumed read starts right after the cursor.
    part = list(read_records(store.client, store.keys, start=f"({got[1][0]}", end=got[3][0]))
    assert [sid for sid, _ in part] == [got[2][0], got[3][0]]


def test_tail_of_an_empty_stream(store: Store) -> None:
    assert tail_id(store.client, store.keys) == "0-0"
    assert list(read_records(store.client, store.keys)) == []


def test_watch_receives_an_event_appended_after_it_started(store: Store) -> None:
    j = scenario()
    write(store, j.entries, keep_ids=False)
    received: list[tuple[str, EventRecord]] = []
    arrived = threading.Event()
    started = threading.Event()
    done = threading.Event()

    def run() -> None:
        client = store.connect()
        try:
            stream = watch(client, store.keys, "$", block_ms=100, stop=done.is_set)
            started.set()
            for item in stream:
                received.append(item)
                arrived.set()
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)  # watch() pinned "$": later entries are new to it
    time.sleep(0.2)  # let the watcher block in XREAD
    j.run(c.RenameContainer(ref="web", new_name="www"))
    new_id = write(store, j.entries[-1:], keep_ids=False)[0]
    t0 = time.monotonic()
    assert arrived.wait(1.0), "the watcher did not see the new event within 1 s"
    assert time.monotonic() - t0 < 1.0
    done.set()
    thread.join(5)
    assert not thread.is_alive()
    assert [sid for sid, _ in received] == [new_id]
    assert received[0][1] == j.entries[-1][1]
    # Resumable: from an earlier cursor the same entry comes again.
    assert tail_id(store.client, store.keys) == new_id
    again = watch(store.client, store.keys, j_id_before(store, new_id), block_ms=10)
    assert next(again)[0] == new_id


def j_id_before(store: Store, stream_id: str) -> str:
    """Return the id of the entry just before `stream_id`."""
    before = store.client.xrevrange(store.keys.events, max=f"({stream_id}", count=1)
    return before[0][0].decode()


def test_watch_filters_by_type_and_container(store: Store) -> None:
    j = scenario()
    write(store, j.entries)
    died = list(_take(watch(store.client, store.keys, "0", block_ms=10,
                            types={"ContainerDied"}), 1))
    assert died[0][1].meta.container_id == B
    mine = list(_take(watch(store.client, store.keys, "0", block_ms=10, container="aaa"), 3))
    assert {r.meta.container_id for _, r in mine} == {A}


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        yield next(it)


def test_export_import_into_a_fresh_prefix_gives_the_same_world(store: Store) -> None:
    j = scenario()
    write(store, j.entries)
    buf = io.StringIO()
    export_jsonl(read_records(store.client, store.keys), buf)
    target = store.fresh_keys()
    result = load_into(store.client, target, import_jsonl(io.StringIO(buf.getvalue())))
    assert result.loaded == len(j.entries) and result.last_id == j.entries[-1][0]
    world, checkpoint = load_world(store.client, target)
    assert checkpoint == j.entries[-1][0]
    assert verify(world, j.world) == []
    assert [sid for sid, _ in read_records(store.client, target)] == [s for s, _ in j.entries]
    versions = store.client.hgetall(target.versions)
    assert int(versions[("d" * 64).encode()]) > 0  # the destroyed id keeps its tombstone
    with pytest.raises(Conflict, match="already holds"):
        load_into(store.client, target, j.entries)


def test_replay_verify_detects_a_drifted_snapshot(store: Store) -> None:
    j = scenario()
    result = load_into(store.client, store.keys, j.entries)
    live, checkpoint = load_world(store.client, store.keys)
    world, timeline = replay(read_records(store.client, store.keys, end=checkpoint))
    assert verify(world, live) == [] and len(timeline) == result.loaded
    drifted = msgspec.structs.replace(live.containers[A], pid=1)
    store.client.hset(store.keys.containers, A, msgspec.msgpack.encode(drifted))
    live, _ = load_world(store.client, store.keys)
    assert verify(world, live) == [f"container {A} pid: replay=4242 live=1"]


# --- the CLI handlers ---------------------------------------------------------------------

def _cli(store: Store, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="moor")
    cli.register(parser.add_subparsers(dest="cmd", required=True),
                 lambda: (store.client, store.keys))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_cli_ps_inspect_events_replay(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    j = scenario()
    load_into(store.client, store.keys, j.entries)
    assert _cli(store, "ps") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CONTAINER ID") and out[1].endswith("web") and len(out) == 2
    assert _cli(store, "ps", "-aq") == 0
    assert capsys.readouterr().out.split() == ["c" * 12, B[:12], A[:12]]
    assert _cli(store, "ps", "--filter", "status=exited", "--format", "json") == 0
    assert [json.loads(x)["Id"] for x in capsys.readouterr().out.splitlines()] == [B]
    assert _cli(store, "ps", "--filter", "status=nope") == 1
    assert capsys.readouterr().err.startswith(
        "Error response from daemon: invalid value for state (nope)")

    assert _cli(store, "inspect", "web", "nothere") == 1
    captured = capsys.readouterr()
    assert [d["Id"] for d in json.loads(captured.out)] == [A]
    assert captured.err == "Error response from daemon: No such container: nothere\n"

    last = j.entries[-1][0]
    assert _cli(store, "events", "--since", "0", "--until", last, "--filter", "event=die") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and f" container die {B} (" in lines[0] and "exitCode=3" in lines[0]
    assert _cli(store, "events", "--since", "0", "--until", last, "--format", "json",
                "--filter", "container=web", "--filter", "event=start") == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(ev["Action"], ev["id"]) for ev in events] == [("start", A)]

    assert _cli(store, "replay", "--verify") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(j.entries) + 1 and out[-1].startswith("verify: OK")
    store.client.hdel(store.keys.containers, "c" * 64)
    assert _cli(store, "replay", "--verify", "--format", "json") == 1
    report = json.loads(capsys.readouterr().out.splitlines()[-1])["verify"]
    assert not report["ok"] and f"container {'c' * 64}: only in the replay" in \
        report["differences"]


def test_cli_export_then_import(store: Store, capsys: pytest.CaptureFixture[str],
                                tmp_path: Any) -> None:
    j = scenario()
    write(store, j.entries)
    path = tmp_path / "journal.jsonl"
    assert _cli(store, "export", "-o", str(path)) == 0
    assert len(path.read_text().splitlines()) == len(j.entries)
    assert _cli(store, "import", str(path)) == 1  # this prefix already has a journal
    assert "already holds" in capsys.readouterr().err
    target = store.fresh_keys()
    store.keys, source = target, store.keys
    try:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(path.read_text() + "oops\n")
        assert _cli(store, "import", str(bad)) == 1
        err = capsys.readouterr().err
        assert f"line {len(j.entries) + 1}: not an export line" in err
        assert _cli(store, "import", str(path)) == 0
        assert "imported" in capsys.readouterr().out
        assert _cli(store, "replay", "--verify", "--file", str(path)) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith("verify: OK")
    finally:
        store.keys = source


def test_cli_watch_rows_follow_new_events(store: Store) -> None:
    j = Journal().base()
    j.create(A, "web")
    write(store, j.entries, keep_ids=False)
    done = threading.Event()
    rows: list[dict[str, Any]] = []
    got = threading.Event()

    def run() -> None:
        client = store.connect()
        try:
            for row in cli.follow_changes(client, store.keys, None, container="web",
                                          block_ms=50, stop=done.is_set):
                rows.append(row)
                got.set()
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.3)
    j.run(c.StartContainer(ref="web"))
    write(store, j.entries[-1:], keep_ids=False)
    assert got.wait(1.0)
    done.set()
    thread.join(5)
    assert [(r["type"], r["name"], r["status"]) for r in rows] == [
        ("StartInitiated", "web", "created")]


def test_cli_events_follow_until_a_future_time(store: Store,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    j = Journal().base()
    j.create(A, "web")
    write(store, j.entries, keep_ids=False)
    j.run(c.RenameContainer(ref="web", new_name="www"))
    timer = threading.Timer(0.3, lambda: write(store, j.entries[-1:], keep_ids=False))
    timer.start()
    until = f"{time.time() + 1.0:.3f}"
    t0 = time.monotonic()
    try:
        assert _cli(store, "events", "--since", "0", "--until", until, "--format", "json",
                    "--filter", "type=container") == 0
    finally:
        timer.join()
    assert time.monotonic() - t0 < 3
    actions = [json.loads(x)["Action"] for x in capsys.readouterr().out.splitlines()]
    assert actions == ["create", "rename"]
