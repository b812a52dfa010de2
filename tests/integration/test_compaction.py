"""`moor compact` and the dedupe retention window (issue 8, finding 12).

The commands stream and the `done` hash are trimmed below a recorded cut-off; the
journal is never trimmed; nothing unsettled goes; a command re-sent after the window is
decided again (the documented idempotency window).
"""

from __future__ import annotations

import time

import pytest

from commands import schema as c
from commands.client import Client
from commands.codec import CODEC
from engine.compact import compact
from engine.keys import GROUP
from events import model as e
from tests.harness import ReducerThread, all_records, busybox, seed

HOUR_MS = 3_600_000


def _old_creates(r, keys, n: int, age_ms: int) -> list[str]:
    """Append n creates with stream ids `age_ms` in the past (as if sent back then)."""
    base = int(time.time() * 1000) - age_ms
    ids = []
    for i in range(n):
        env = c.Envelope(command_id=f"old-{i}", container_id=f"{i:064x}",
                         issued_at=base * 1_000_000, actor="past")
        r.xadd(keys.commands, CODEC.entry(env, c.CreateContainer(name=f"old{i}",
                                                                  config=busybox())),
               id=f"{base}-{i}")
        ids.append(env.command_id)
    return ids


@pytest.fixture(autouse=True)
def _no_automatic_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOR_COMPACT_INTERVAL", "0")


def test_compact_trims_settled_commands_and_marks_past_the_window(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5, actor="ops")
    old = _old_creates(r, keys, 5, age_ms=2 * HOUR_MS)
    with ReducerThread(r, keys, block_ms=100):
        seed(client)
        for i in range(3):
            client.create(busybox(), name=f"new{i}")
        journal_before = r.xlen(keys.events)
        assert all(r.hexists(keys.done, cid) for cid in old)
        length = r.xlen(keys.commands)
        client.submit(c.CompactLog(retain_ms=HOUR_MS))
        deadline = time.monotonic() + 5
        while r.xlen(keys.commands) > length + 1 - 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        # exactly the five old entries went; the new ones and the compaction stay
        assert r.xlen(keys.commands) == length + 1 - 5
        assert [r.hexists(keys.done, cid) for cid in old] == [False] * 5
        # the journal is whole, and records who compacted
        records = [rec for _, rec in all_records(r, keys)]
        assert len(records) == journal_before + 1
        compacted = [rec for rec in records if isinstance(rec.event, e.LogCompacted)]
        assert len(compacted) == 1 and compacted[0].meta.actor == "ops"
        # The old creates came before the image existed: each was refused (404).
        first = [rec.event for rec in records if rec.meta.command_id == old[0]]
        assert [type(ev) for ev in first] == [e.CommandRejected] and first[0].status == 404
        # Past the window an id is forgotten: re-sent now, it is decided again (the image
        # exists now: created), not answered with the stored refusal.
        env = c.Envelope(command_id=old[0], container_id="0" * 64,
                         issued_at=time.time_ns(), actor="late", reply=True)
        r.xadd(keys.commands, CODEC.entry(env, c.CreateContainer(name="old0",
                                                                  config=busybox())))
        result = client.wait_result(old[0])
        assert result.result.status == 200


def test_nothing_unsettled_is_trimmed(backend):
    """An entry still pending in the group stays, and so does everything after it."""
    r, keys = backend
    _old_creates(r, keys, 4, age_ms=2 * HOUR_MS)
    r.xgroup_create(keys.commands, GROUP, id="0", mkstream=True)
    got = r.xreadgroup(GROUP, "someone", {keys.commands: ">"}, count=4)
    ids = [i for i, _ in got[0][1]]
    r.xack(keys.commands, GROUP, ids[0], ids[1])  # 2 settled, 2 pending
    r.set(keys.epoch, 7)
    done = compact(r, keys, 7, int(time.time() * 1000))
    assert done.entries == 2
    assert [i for i, _ in r.xrange(keys.commands)] == ids[2:]
    # a deposed leader cannot trim
    r.xack(keys.commands, GROUP, *ids[2:])
    assert compact(r, keys, 6, int(time.time() * 1000)).entries == 0
    assert r.xlen(keys.commands) == 2


def test_moor_compact_records_who_compacted(redis_server, monkeypatch):
    import os
    import subprocess
    import sys

    import redis

    from tests.harness import cleanup, fresh_keys

    r = redis.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    env = {**os.environ, "MOOR_PREFIX": keys.prefix, "MOOR_REDIS_URL": redis_server.url}
    try:
        with ReducerThread(r, keys, block_ms=100):
            done = subprocess.run(
                [sys.executable, "-m", "moor.cli", "--actor", "alice", "--reason", "nightly",
                 "compact", "--retain", "2h"], env=env, capture_output=True, text=True,
                timeout=60)
            assert done.returncode == 0, done.stderr
            assert "the journal is kept whole" in done.stdout
            bad = subprocess.run([sys.executable, "-m", "moor.cli", "compact", "--retain",
                                  "5s"], env=env, capture_output=True, text=True, timeout=60)
            assert bad.returncode != 0 and "retention must be at least 60s" in bad.stderr
        [rec] = [rec for _, rec in all_records(r, keys) if isinstance(rec.event, e.LogCompacted)]
        assert (rec.meta.actor, rec.meta.reason, rec.event.retain_ms) == (
            "alice", "nightly", 2 * HOUR_MS)
    finally:
        cleanup(r, keys)
        r.close()
