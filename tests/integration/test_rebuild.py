"""The snapshot is a cache: delete it, restart the reducer, and the events rebuild it exactly."""

from __future__ import annotations

from typing import Any

from engine.keys import GROUP
from engine.reducer import Reducer
from engine.snapshot import load_world
from tests.harness import all_records
from tests.integration.workload import (
    builtins,
    fields_of,
    generate,
    pure_fold,
    state_of,
    xadd_all,
)

RUN = 800
FIRST = 600


def _fold(reducer: Reducer) -> None:
    while reducer.step():
        pass


def _snapshot_hashes(r: Any, keys: Any) -> tuple[dict[bytes, bytes], ...]:
    return r.hgetall(keys.containers), r.hgetall(keys.versions), r.hgetall(keys.world)


def test_deleting_the_snapshot_and_restarting_rebuilds_the_same_state(backend):
    r, keys = backend
    items = generate(RUN, tag="rb", seed=5)
    xadd_all(r, keys, [fields_of(i) for i in items[:FIRST]])
    first = Reducer(r, keys, owner="first", block_ms=10)
    assert first.try_acquire()
    _fold(first)
    live = state_of(first.world)
    hashes = _snapshot_hashes(r, keys)
    assert hashes[0] and hashes[1] and hashes[2]
    assert live["destroyed"] and live["addresses"] and live["images"]  # a rich state
    first.release()

    r.delete(keys.containers, keys.versions, keys.world)
    second = Reducer(r, keys, owner="second", block_ms=10)
    assert second.try_acquire()  # boot sees no snapshot at the events' end: rebuild
    assert state_of(second.world) == live
    assert _snapshot_hashes(r, keys) == hashes  # byte for byte, checkpoint included
    assert state_of(load_world(r, keys)[0]) == live

    # The rebuilt snapshot is good enough to write against: versions (tombstones
    # included) pass the script's checks and the fold goes on as if nothing happened.
    xadd_all(r, keys, [fields_of(i) for i in items[FIRST:]])
    _fold(second)
    world, records, results = pure_fold(items)
    assert state_of(second.world) == state_of(world)
    assert [builtins(rec) for _, rec in all_records(r, keys)] == [builtins(x) for x in records]
    assert r.hlen(keys.done) == len(results)
    assert r.xpending(keys.commands, GROUP)["pending"] == 0
    second.release()


def test_rebuild_is_idempotent_and_matches_a_replay(backend):
    r, keys = backend
    items = generate(FIRST, tag="rb2", seed=9)
    xadd_all(r, keys, [fields_of(i) for i in items])
    reducer = Reducer(r, keys, block_ms=10)
    assert reducer.try_acquire()
    _fold(reducer)
    hashes = _snapshot_hashes(r, keys)
    live = state_of(reducer.world)
    for _ in range(2):
        assert state_of(reducer.rebuild()) == live
        assert _snapshot_hashes(r, keys) == hashes
    reducer.release()


def _run_with_damage(r: Any, keys: Any, damaged: str) -> tuple[Reducer, list[Any]]:
    items = generate(RUN, tag=f"rb-{damaged}", seed=5)
    xadd_all(r, keys, [fields_of(i) for i in items[:FIRST]])
    first = Reducer(r, keys, owner="first", block_ms=10)
    assert first.try_acquire()
    _fold(first)
    first.release()
    r.delete(getattr(keys, damaged))
    second = Reducer(r, keys, owner="second", block_ms=10)
    assert second.try_acquire()
    xadd_all(r, keys, [fields_of(i) for i in items[FIRST:]])
    for _ in range(50):  # a refused write costs one round (it rebuilds, then redoes)
        if not second.step() and r.xpending(keys.commands, GROUP)["pending"] == 0 \
                and r.hlen(keys.done) == len(pure_fold(items)[2]):
            break
    return second, items


def test_a_lost_world_hash_is_rebuilt_at_boot(backend):
    r, keys = backend
    reducer, items = _run_with_damage(r, keys, "world")
    world, records, _ = pure_fold(items)
    assert state_of(reducer.world) == state_of(world)
    assert [builtins(rec) for _, rec in all_records(r, keys)] == [builtins(x) for x in records]
    reducer.release()


def test_a_lost_versions_hash_is_rebuilt_on_the_first_refused_write(backend):
    """The checkpoint still matches, so boot trusts the snapshot; the write script's
    version check refuses the first batch, and the reducer rebuilds instead of reloading
    the damaged snapshot forever."""
    r, keys = backend
    reducer, items = _run_with_damage(r, keys, "versions")
    world, records, _ = pure_fold(items)
    assert state_of(reducer.world) == state_of(world)
    assert state_of(load_world(r, keys)[0]) == state_of(world)
    assert [builtins(rec) for _, rec in all_records(r, keys)] == [builtins(x) for x in records]
    reducer.release()


def test_a_lost_containers_hash_is_detected(backend):
    r, keys = backend
    reducer, items = _run_with_damage(r, keys, "containers")
    world, _, _ = pure_fold(items)
    assert state_of(reducer.world) == state_of(world)
