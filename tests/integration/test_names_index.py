"""The names index (name -> holder id, engine.keys.Keys.names) is written with the facts.

A sharded client routes a reference by the index of the name's home shard, so it must
say exactly what the world says, batch after batch and after a rebuild from the events.
"""

from __future__ import annotations

from typing import Any

from engine.reducer import Reducer
from tests.integration.workload import fields_of, generate, xadd_all


def _index(r: Any, keys: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.names).items()}


def test_the_names_index_follows_creates_renames_and_removals(backend):
    r, keys = backend
    items = generate(400, tag="nidx", seed=11)
    xadd_all(r, keys, [fields_of(i) for i in items])
    reducer = Reducer(r, keys, block_ms=10)
    assert reducer.try_acquire()
    while reducer.step():
        pass
    world = reducer.world
    assert world.names  # the workload leaves named containers behind
    assert _index(r, keys) == {**world.reserved, **world.names}
    # A rebuild from the events rewrites it exactly.
    r.delete(keys.names)
    reducer.rebuild()
    assert _index(r, keys) == {**world.reserved, **world.names}
    reducer.release()
