"""Fencing: with two reducers on one shard, only the lease holder's writes land.

A reducer that is paused past its lease (a GC pause, SIGSTOP, a slow host) wakes up still
believing it leads. The lease alone cannot stop it; the fencing epoch checked inside the
write script does. These tests pause a leader between deciding a batch and writing it,
let a second reducer take over, and show the stale write is refused as a whole.

A deposed reducer's reads are the other half (issue 8, finding 2): a blocking XREADGROUP
it sent while it led, or the read it pipelined behind its (refused) write, takes entries
after the new leader booted. The last tests step two reducers by hand through exactly
those interleavings and check that every command is applied once, in stream order, and
that every waiting client gets its answer.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fakeredis
import pytest

from commands import schema as c
from commands.client import Client
from engine.core.evolve import fold
from engine.keys import GROUP
from engine.lease import Deposed
from engine.reducer import Reducer
from engine.snapshot import load_world
from tests.harness import IMAGE_ID, SUBNET, ReducerThread, all_records, busybox
from tests.integration.workload import state_of

IDS = [f"{i:02x}" * 32 for i in range(0xA1, 0xA6)]  # 64-hex container ids


def _seed(client: Client) -> None:
    client.send(c.DefineNetwork(network=SUBNET), command_id="seed-network")
    client.send(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox:latest",)),
                command_id="seed-image")


def _fold_until_idle(reducer: Reducer) -> None:
    while reducer.step():
        pass


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def _pending(r: Any, keys: Any) -> int:
    return int(r.xpending(keys.commands, GROUP)["pending"])


def _causations(r: Any, keys: Any) -> list[str]:
    return [rec.meta.command_id for _, rec in all_records(r, keys)]


def test_only_the_lease_holders_writes_land(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5)
    a = Reducer(r, keys, owner="reducer-A", lease_ms=300, block_ms=20)
    b = Reducer(r, keys, owner="reducer-B", lease_ms=5000, block_ms=20)

    assert a.try_acquire() and a.epoch == 1
    assert not b.try_acquire() and b.epoch is None
    assert r.get(keys.lease) == b"reducer-A" and r.get(keys.epoch) == b"1"

    # While A leads, its writes land.
    _seed(client)
    _fold_until_idle(a)
    assert _causations(r, keys) == ["seed-network", "seed-image"]

    # A reads the next batch and decides it, then freezes right before its write.
    paused, resume = threading.Event(), threading.Event()
    calls: list[tuple[list[Any], Any]] = []
    real_write = a.writer.write

    def frozen_write(keys: list[str], args: list[Any]) -> Any:
        if not calls:
            paused.set()
            assert resume.wait(10)
        result = real_write(keys=keys, args=args)
        calls.append((args, result))
        return result

    a.writer.write = frozen_write
    stop_a = threading.Event()
    thread_a = threading.Thread(target=a.run, args=(stop_a,), daemon=True)
    create_ids = [f"create-{i}" for i in range(len(IDS))]
    for i, (cid, command_id) in enumerate(zip(IDS, create_ids, strict=True)):
        client.send(c.CreateContainer(name=f"fenced-{i}", config=busybox()),
                    container_id=cid, command_id=command_id)
    try:
        thread_a.start()
        assert paused.wait(5), "A never reached its write"
        assert set(a.world.containers) == set(IDS)  # A decided the whole batch in memory

        # A stops renewing; its lease lapses and B takes over with the next epoch.
        _wait(lambda: r.get(keys.lease) is None, timeout=3)
        assert b.try_acquire() and b.epoch == 2
        events_before = r.xlen(keys.events)
        resume.set()

        # A wakes up and writes with epoch 1: the script refuses the whole batch.
        _wait(lambda: a.epoch is None)
        assert len(calls) == 1
        args, result = calls[0]
        assert args[0] == 1 and result[0] in (b"FENCED", "FENCED")
        assert r.xlen(keys.events) == events_before  # nothing A decided reached the stream
        assert r.hmget(keys.done, create_ids) == [None] * len(create_ids)
        assert r.hlen(keys.containers) == 0 and r.xlen(keys.quarantine) == 0
        assert _pending(r, keys) == len(IDS)  # A's entries are still owed, not acknowledged
        assert r.get(keys.lease) == b"reducer-B"  # stepping down did not touch B's lease
    finally:
        resume.set()
        stop_a.set()
        thread_a.join(timeout=10)
    assert not thread_a.is_alive()
    assert len(calls) == 1  # A stood by after stepping down: no second write attempt
    assert r.get(keys.lease) == b"reducer-B"  # A's clean exit released nothing of B's

    # B folds the entries A had read (pending under A's consumer: B claims them) exactly once.
    _fold_until_idle(b)
    causes = _causations(r, keys)
    assert causes == ["seed-network", "seed-image", *create_ids]
    assert _pending(r, keys) == 0
    for cid, command_id in zip(IDS, create_ids, strict=True):
        result = client.wait_result(command_id, timeout=1).result
        assert result.ok and result.container_id == cid and result.version == 1
    live = state_of(b.world)
    assert state_of(fold(rec for _, rec in all_records(r, keys))) == live
    assert state_of(load_world(r, keys)[0]) == live
    assert r.get(keys.epoch) == b"2"
    b.release()
    assert r.get(keys.lease) is None


def test_a_deposed_writer_cannot_write_even_a_single_command(backend):
    """The epoch check is the script's first line: no op of a stale batch runs."""
    r, keys = backend
    client = Client(r, keys, timeout=5)
    a = Reducer(r, keys, owner="reducer-A", lease_ms=5000, block_ms=20)
    assert a.try_acquire()
    _seed(client)
    _fold_until_idle(a)
    # Another reducer was elected meanwhile (the lease was lost and re-taken elsewhere).
    r.delete(keys.lease)
    b = Reducer(r, keys, owner="reducer-B", lease_ms=5000, block_ms=20)
    assert b.try_acquire() and b.epoch == 2
    client.send(c.CreateContainer(name="late", config=busybox()), container_id=IDS[0],
                command_id="late-create")
    client.send(c.DefineNetwork(network=SUBNET), command_id="late-network")
    events_before = r.xlen(keys.events)
    with pytest.raises(Deposed):  # run() catches it and stands by
        a.step()
    assert r.xlen(keys.events) == events_before
    assert r.hmget(keys.done, ["late-create", "late-network"]) == [None, None]
    assert r.hlen(keys.versions) == 0 and r.llen(keys.outbox) == 0
    # The renewal is refused too: the lease and the epoch are B's.
    a.lease.renewed_at = 0.0
    with pytest.raises(Deposed):
        a.renew()
    _fold_until_idle(b)
    assert _causations(r, keys)[-2:] == ["late-create", "late-network"]
    assert _pending(r, keys) == 0
    b.release()


def test_a_standby_takes_over_when_the_lease_lapses(backend):
    r, keys = backend
    client = Client(r, keys, timeout=5)
    lease_ms = 300
    a = ReducerThread(r, keys, owner="reducer-A", lease_ms=lease_ms, block_ms=20)
    b = ReducerThread(r, keys, owner="reducer-B", lease_ms=lease_ms, block_ms=20)
    a_released: list[bool] = []
    a.reducer.release = lambda: a_released.append(True)  # type: ignore[method-assign]
    try:
        a.thread.start()
        _wait(lambda: a.reducer.epoch == 1)
        b.thread.start()
        _seed(client)
        before = client.create(busybox(), name="before", container_id=IDS[0])
        assert client.wait_result("seed-image", timeout=1).result.ok
        # A renews: B stays on standby well past one lease period.
        time.sleep(3 * lease_ms / 1000)
        assert b.reducer.epoch is None and r.get(keys.lease) == b"reducer-A"

        # A dies without releasing the lease (crash): B takes over once it lapses.
        a.stop_event.set()
        a.thread.join(timeout=5)
        assert not a.thread.is_alive() and a_released == [True]
        assert r.get(keys.lease) == b"reducer-A"  # still held by the dead leader
        t0 = time.monotonic()
        after = client.create(busybox(), name="after", container_id=IDS[1])
        took = time.monotonic() - t0
        assert b.reducer.epoch == 2 and r.get(keys.lease) == b"reducer-B"
        assert took < 3.0, f"takeover took {took:.2f}s"
        assert set(b.reducer.world.containers) == {before, after}
    finally:
        a.stop_event.set()
        b.stop_event.set()
        a.thread.join(timeout=10)
        b.thread.join(timeout=10)
    assert not b.thread.is_alive()
    assert r.get(keys.lease) is None  # B's clean exit released the lease
    assert _pending(r, keys) == 0
    records = all_records(r, keys)
    assert [rec.meta.command_id for _, rec in records].count("seed-image") == 1
    assert state_of(fold(rec for _, rec in records)) == state_of(load_world(r, keys)[0])


# --- a deposed reducer's reads strand nothing (issue 8, finding 2) -------------------------

def _append_atomically(r: Any, keys: Any, names: list[str]) -> list[str]:
    """Append one create per name in one transaction (a blocked reader gets them all);
    return their command ids, in stream order."""
    pipe = r.pipeline(transaction=True)
    queued = Client(pipe, keys)
    ids = [queued.send(c.CreateContainer(name=name, config=busybox()), reply=True,
                       container_id=hashlib.sha256(name.encode()).hexdigest(),
                       command_id=f"create-{name}")
           for name in names]
    pipe.execute()
    return ids


def _waiters(client: Client, command_ids: list[str]) -> list[Future[Any]]:
    """Start one waiting client per command (what `moor create` does after its XADD)."""
    pool = ThreadPoolExecutor(max_workers=len(command_ids))
    futures = [pool.submit(client.wait_result, cid) for cid in command_ids]
    pool.shutdown(wait=False)
    return futures


def _step_until_answered(leader: Reducer, waiters: list[Future[Any]],
                         timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(w.done() for w in waiters) and time.monotonic() < deadline:
        leader.step()


def _pending_by_consumer(r: Any, keys: Any) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for entry in r.xpending_range(keys.commands, GROUP, "-", "+", 1000):
        found.setdefault(entry["consumer"], []).append(entry["message_id"])
    return found


def _wait_blocked_in_xreadgroup(r: Any, entered: threading.Event) -> None:
    """Wait until the reader's XREADGROUP is blocked in Redis (fakeredis: until it was
    called; there the outcome is the same either way: the entries are new to the group
    and nobody else reads)."""
    assert entered.wait(5), "the reader never reached its read"
    if isinstance(r, fakeredis.FakeRedis):
        time.sleep(0.05)
        return
    _wait(lambda: any(cl["cmd"] == "xreadgroup" and "b" in cl["flags"]
                      for cl in r.client_list()))


def _assert_applied_once_in_order(r: Any, keys: Any, b: Reducer, command_ids: list[str],
                                  waiters: list[Future[Any]]) -> None:
    # Every waiting client got its answer (none timed out), and it is a success.
    assert all(w.done() for w in waiters), "a client is still waiting (stranded command)"
    assert [w.result().result.ok for w in waiters] == [True] * len(waiters)
    # Each command is applied exactly once, in stream order: one ContainerCreated each.
    # A list, not a set, so a duplicate would show.
    causes = _causations(r, keys)
    assert causes == ["seed-network", "seed-image", *command_ids]
    assert _pending(r, keys) == 0
    # The deposed reducer's consumer was retired once it owed nothing.
    assert [cl["name"] for cl in r.xinfo_consumers(keys.commands, GROUP)] \
        == [f"{b.owner}#{b.epoch}".encode()]
    live = state_of(b.world)
    assert state_of(fold(rec for _, rec in all_records(r, keys))) == live
    assert state_of(load_world(r, keys)[0]) == live


def test_a_deposed_reducers_blocking_read_strands_nothing(backend):
    """A blocks in XREADGROUP while it leads; B takes over and boots (nothing pending),
    then commands arrive and A's read takes them. A's write is fenced; B must apply them."""
    r, keys = backend
    client = Client(r, keys, timeout=5)
    a = Reducer(r, keys, owner="reducer-A", lease_ms=5000, block_ms=20)
    assert a.try_acquire()
    _seed(client)
    _fold_until_idle(a)

    entered = threading.Event()
    real_read = a.intake.read

    def read(block_ms: int | None = None) -> Any:
        entered.set()
        return real_read(block_ms)

    a.intake.read = read  # type: ignore[method-assign]
    a.block_ms = 10_000  # the stream is idle: A waits long for the next command
    a_failed: list[BaseException] = []

    def step_a() -> None:
        try:
            a.step()
        except BaseException as exc:  # the assertion below names it
            a_failed.append(exc)

    thread_a = threading.Thread(target=step_a, daemon=True)
    thread_a.start()
    _wait_blocked_in_xreadgroup(r, entered)

    # A's lease lapses (it is blocked; a pause would do the same); B takes over. Its boot
    # finds nothing pending, and its first read finds nothing new.
    r.delete(keys.lease)
    b = Reducer(r, keys, owner="reducer-B", lease_ms=5000, block_ms=20)
    assert b.try_acquire() and b.epoch == 2
    assert b.step() == 0

    command_ids = _append_atomically(r, keys, ["one", "two", "three"])
    waiters = _waiters(client, command_ids)
    thread_a.join(10)
    assert not thread_a.is_alive()
    assert [type(exc) for exc in a_failed] == [Deposed]  # A's write was refused
    # The interleaving happened: A's blocking read took every new entry (B has none).
    pending = _pending_by_consumer(r, keys)
    assert sorted(map(len, pending.values())) == [3]
    assert r.hmget(keys.done, command_ids) == [None] * 3

    _step_until_answered(b, waiters)
    _assert_applied_once_in_order(r, keys, b, command_ids, waiters)
    b.release()


def test_the_read_pipelined_behind_a_refused_write_strands_nothing(backend):
    """The overlapped path: A sends batch 1's write with the next XREADGROUP queued behind
    it, after B took over and folded what A had read. The write is fenced, but the read
    behind it still runs and takes the newer entries; B must apply them, in order."""
    r, keys = backend
    client = Client(r, keys, timeout=5)
    a = Reducer(r, keys, owner="reducer-A", lease_ms=5000, block_ms=20, batch=2)
    assert a.try_acquire()
    _seed(client)
    _fold_until_idle(a)
    first = _append_atomically(r, keys, ["p1", "p2", "p3", "p4"])  # two full batches
    b = Reducer(r, keys, owner="reducer-B", lease_ms=5000, block_ms=20)
    later: list[str] = []
    sent: list[tuple[Any, ...] | None] = []
    real_send = a.writer.send

    def send(batch: Any, read_next: tuple[Any, ...] | None) -> Any:
        if not sent:
            # A has read batches 1 and 2 and decided batch 1. Meanwhile its lease lapsed:
            # B takes over, claims what A read and folds it; then newer commands arrive.
            r.delete(keys.lease)
            assert b.try_acquire() and b.epoch == 2
            _fold_until_idle(b)
            assert _causations(r, keys)[2:] == first
            later.extend(_append_atomically(r, keys, ["p5", "p6"]))
        sent.append(read_next)
        return real_send(batch, read_next)

    a.writer.send = send  # type: ignore[method-assign]
    with pytest.raises(Deposed):
        a.step()
    assert sent and sent[0] is not None  # the write went out with a read queued behind it
    # That read ran after the refused write: A took the newer entries, B has none.
    pending = _pending_by_consumer(r, keys)
    assert sorted(map(len, pending.values())) == [2]
    assert r.hmget(keys.done, later) == [None, None]

    waiters = _waiters(client, first + later)
    _step_until_answered(b, waiters)
    _assert_applied_once_in_order(r, keys, b, first + later, waiters)
    b.release()
